"""The lab: the `pft` entry point and the launcher that runs Redis, API, worker and dashboard."""

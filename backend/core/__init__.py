"""Backend configuration and security helpers."""

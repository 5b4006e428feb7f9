"""Tests of the backend: persistence, API, auth, job lifecycle."""

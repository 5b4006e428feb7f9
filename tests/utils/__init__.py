"""Shared test helpers (factories)."""

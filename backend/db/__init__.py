"""Persistence: the schema (``models``), engines and sessions (``session``), Alembic migrations."""

"""Alembic migrations of the lab database (run by `backend.db.session.migrate`)."""

"""backend: the HTTP API (FastAPI), persistence (SQLAlchemy), auth and job lifecycle."""

"""Alembic migrations produce exactly the schema of `backend.db.models`."""

from __future__ import annotations

import multiprocessing

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from backend.db.models import Base
from backend.db.session import dispose_engine, get_engine, migrate


def test_migrated_schema_matches_models(db_url: str) -> None:
    with get_engine(db_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrate_is_idempotent(db_url: str) -> None:
    migrate(db_url)
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
        assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'lab.db'}"
    migrate(url)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    dispose_engine(url)


def _migrate(url: str) -> None:
    migrate(url)


@pytest.mark.slow
def test_concurrent_first_migrations_do_not_collide(tmp_path) -> None:
    """The API and a worker starting together on a fresh SQLite file."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate, args=(url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    dispose_engine(url)

"""``GET /health``: database reachable and writable, broker reachable (the one open route).

"Writable" is probed with a real write that is rolled back: a no-op UPDATE of the one-row
``alembic_version`` table, under a short lock timeout. A database that answers reads but not
writes (read-only file or mount, a full disk on PostgreSQL's side, a standby, a writer holding
SQLite's lock) is reported unwritable, and the API answers 503 "degraded". So is a SQLite file
that vanished or was replaced under the running API (`backend.db.file_guard`), with the reason
in the ``X-Database-Problem`` header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from sqlalchemy.orm import Session

from backend.api.deps import SessionDep, SettingsDep
from backend.enqueue import broker_reachable
from contract.api import Health

router = APIRouter(tags=["health"])

PROBE_TIMEOUT_MS = 2000
DATABASE_PROBLEM_HEADER = "X-Database-Problem"  # why the database is not writable, when known
_SQLITE_BUSY_MS = 30_000  # backend.db.session's connect timeout, restored after the probe


def database_reachable(session: Session) -> bool:
    try:
        session.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "unreachable"
        return False
    finally:
        session.rollback()


def database_writable(session: Session) -> bool:
    """Whether a write would succeed now (nothing is written: the probe is rolled back)."""
    try:
        conn = session.connection()
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {PROBE_TIMEOUT_MS}")
        else:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {PROBE_TIMEOUT_MS}")
        try:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        finally:
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not writable"
        return False
    finally:
        session.rollback()


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "the database is unreachable or read-only"}},
)
def health(
    session: SessionDep, settings: SettingsDep, request: Request, response: Response
) -> Health:
    from importlib.metadata import PackageNotFoundError, version

    database = database_reachable(session)
    writable = database and database_writable(session)
    lost = request.app.state.database_file.problem()
    if lost is not None:  # the file the API holds was deleted or replaced: writes are refused
        writable = False
        response.headers[DATABASE_PROBLEM_HEADER] = lost.encode(
            "ascii", "backslashreplace"
        ).decode()
    broker = broker_reachable(settings=settings)
    try:
        ver = version("pft-lab")
    except PackageNotFoundError:
        ver = "unknown"
    if not writable:
        response.status_code = 503
    return Health(
        status="ok" if writable and broker else "degraded",
        database=database,
        database_writable=writable,
        broker=broker,
        version=ver,
    )

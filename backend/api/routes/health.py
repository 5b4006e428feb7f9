"""``GET /health``: database and broker reachability (the one route without auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import text

from backend.api.deps import SessionDep, SettingsDep
from backend.enqueue import broker_reachable
from backend.schemas import Health

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "the database is unreachable"}},
)
def health(session: SessionDep, settings: SettingsDep, response: Response) -> Health:
    from importlib.metadata import PackageNotFoundError, version

    try:
        session.execute(text("SELECT 1"))
        database = True
    except Exception:  # noqa: BLE001 - any failure means "unreachable"
        database = False
    broker = broker_reachable(settings=settings)
    try:
        ver = version("pft-lab")
    except PackageNotFoundError:
        ver = "unknown"
    if not database:
        response.status_code = 503
    return Health(
        status="ok" if database and broker else "degraded",
        database=database,
        broker=broker,
        version=ver,
    )

"""The API router: the users' routes take the users' token, the worker routes the worker
token, ``/health`` none."""

from fastapi import APIRouter, Depends

from backend.api.deps import require_token, require_worker_token
from backend.api.routes import (
    catalog,
    cost,
    criteria,
    experiments,
    health,
    jobs,
    models,
    preview,
    results,
    soups,
    worker,
)

api_router = APIRouter()
api_router.include_router(health.router)
_protected = [
    catalog.router,
    models.router,
    preview.router,
    jobs.router,
    experiments.router,
    soups.router,
    criteria.router,
    cost.router,
    results.router,
]
for router in _protected:
    api_router.include_router(
        router,
        dependencies=[Depends(require_token)],
        responses={401: {"description": "missing or wrong API token"}},
    )
api_router.include_router(
    worker.router,
    dependencies=[Depends(require_worker_token)],
    responses={401: {"description": "missing or wrong worker token"}},
)

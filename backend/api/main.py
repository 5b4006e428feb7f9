"""The ``/api/v1`` router: every route but ``/health`` requires the bearer token."""

from fastapi import APIRouter, Depends

from backend.api.deps import require_token
from backend.api.routes import catalog, experiments, health, jobs, models, soups

api_router = APIRouter()
api_router.include_router(health.router)
_protected = [catalog.router, models.router, jobs.router, experiments.router, soups.router]
for router in _protected:
    api_router.include_router(
        router,
        dependencies=[Depends(require_token)],
        responses={401: {"description": "missing or wrong API token"}},
    )

"""FastAPI dependencies as ``Annotated`` aliases: the database session, settings and auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.api.auth_gate import UNAUTHORIZED, WORKER_UNAUTHORIZED
from backend.core.config import ApiSettings
from backend.core.security import token_matches

_bearer = HTTPBearer(auto_error=False, description="the token from PFT_API_TOKEN or api_token")
_worker_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="WorkerToken",
    description="the worker token from PFT_WORKER_TOKEN or worker_token",
)


# The cheap dependencies are `async` on purpose: FastAPI runs sync dependencies in its thread
# pool, and a thread hop per dependency costs more than the work itself.


async def app_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One session per route call; uncommitted work is rolled back when the route returns.

    Creating a session does no I/O; the (sync) route that uses it runs in the thread pool.
    `SessionDep` closes it as soon as the route returns (``scope="function"``), before the
    response is sent and before background tasks run: a session held until after a background
    task (the enqueue after a submit) kept its pooled connection while the task waited for a
    worker thread, and a burst of submits then starved the pool (CI: 7 of 100 answered 500).
    """
    session: Session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


def _check(expected: str, credentials: HTTPAuthorizationCredentials | None, message: str) -> None:
    given = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        given = credentials.credentials
    if given is None or not token_matches(expected, given):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
        )


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless ``Authorization: Bearer <token>`` carries the users' token (constant time)."""
    _check(request.app.state.token, credentials, UNAUTHORIZED)


async def require_worker_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_worker_bearer)],
) -> None:
    """401 unless the request carries the worker token (the users' token does not do)."""
    _check(request.app.state.worker_token, credentials, WORKER_UNAUTHORIZED)


SessionDep = Annotated[Session, Depends(get_db, scope="function")]
SettingsDep = Annotated[ApiSettings, Depends(app_settings)]
IdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="a database id")]

"""FastAPI dependencies as ``Annotated`` aliases: the database session, settings and auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.api.auth_gate import UNAUTHORIZED
from backend.core.config import Settings
from backend.core.security import token_matches

_bearer = HTTPBearer(auto_error=False, description="the token from PFT_API_TOKEN or api_token")


# The cheap dependencies are `async` on purpose: FastAPI runs sync dependencies in its thread
# pool, and a thread hop per dependency costs more than the work itself.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One session per request; uncommitted work is rolled back when the request ends.

    Creating a session does no I/O; the (sync) route that uses it runs in the thread pool.
    """
    session: Session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless ``Authorization: Bearer <token>`` carries the API token (constant time)."""
    expected: str = request.app.state.token
    if credentials is None or credentials.scheme.lower() != "bearer":
        given = None
    else:
        given = credentials.credentials
    if given is None or not token_matches(expected, given):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TokenDep = Annotated[None, Depends(require_token)]
IdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="a database id")]

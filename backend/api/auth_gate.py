"""ASGI middleware that refuses unauthenticated API requests before anything reads their body.

The router's `require_token` dependency runs only after FastAPI has parsed the body, so without
this gate an unauthenticated request with a malformed body would get a 422 describing the
schema instead of a 401. Public paths: health and the OpenAPI documents.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.core.security import token_matches

UNAUTHORIZED = (
    "missing or wrong API token: send 'Authorization: Bearer <token>' (the token is "
    "PFT_API_TOKEN, or the file api_token in the data folder)"
)


class TokenGate:
    def __init__(
        self, app: ASGIApp, prefix: str, public: tuple[str, ...], token: Callable[[], str]
    ) -> None:
        self.app, self.prefix, self.token = app, prefix, token
        self.public = {f"{prefix}{p}" for p in public}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith(self.prefix)
            or path.rstrip("/") in self.public
        ):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not token_matches(self.token(), given.strip()):
            response = JSONResponse(
                {"detail": UNAUTHORIZED}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

"""ASGI middleware that refuses unauthenticated API requests before anything reads their body.

Two credentials, never interchangeable: paths below ``API_PREFIX + WORKER_ROUTES`` take the
worker token, every other path below ``API_PREFIX`` the users' token (public paths: health and
the OpenAPI documents). The routers' dependencies (`backend.api.deps`) check the same again;
this gate exists because they run only after FastAPI has parsed the body, so without it an
unauthenticated request with a malformed body would get a 422 describing the schema.
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
WORKER_UNAUTHORIZED = (
    "missing or wrong worker token: the worker routes take 'Authorization: Bearer <token>' "
    "with PFT_WORKER_TOKEN, or the file worker_token in the data folder (not the API token)"
)


def bearer(headers: list[tuple[bytes, bytes]] | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without one."""
    header = dict(headers or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


class TokenGate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        worker_prefix: str,
        public: tuple[str, ...],
        public_prefixes: tuple[str, ...] = (),
        token: Callable[[], str],
        worker_token: Callable[[], str],
    ) -> None:
        self.app, self.prefix = app, prefix
        self.worker_prefix = f"{prefix}{worker_prefix}/"
        self.token, self.worker_token = token, worker_token
        self.public = {f"{prefix}{p}" for p in public}
        self.public_prefixes = tuple(f"{prefix}{p}" for p in public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith(self.prefix)
            or path.rstrip("/") in self.public
            or path.startswith(self.public_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        if f"{path.rstrip('/')}/".startswith(self.worker_prefix):
            expected, message = self.worker_token(), WORKER_UNAUTHORIZED
        else:
            expected, message = self.token(), UNAUTHORIZED
        given = bearer(scope.get("headers"))
        if given is None or not token_matches(expected, given):
            response = JSONResponse(
                {"detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

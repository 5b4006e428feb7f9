"""Error responses: every failure is JSON with a ``detail``, never a stack trace.

* 422: schema errors and `backend.submit.InvalidRequest`, as ``{"detail": [{"loc", "msg",
  "type"}]}`` where ``msg`` names the accepted values; also a value the database cannot
  store (`sqlalchemy.exc.DataError`), and an ``Idempotency-Key`` reused with another request
  (`backend.idempotency.KeyReused`, ``loc`` ``["header", "Idempotency-Key"]``);
* 409: a job-state conflict (`crud.JobStateError`), or a worker report whose claim lost the
  job (raised in `backend.api.routes.worker`);
* 413: a request body over ``PFT_MAX_BODY_BYTES`` (`BodySizeLimit`);
* 503: a write while the SQLite database file has vanished or was replaced
  (`DatabaseLostGuard`, `backend.db.file_guard`); also a database too busy to answer in time
  (no pooled connection free, or SQLite still locked after its busy timeout), with
  ``Retry-After``: nothing was written, the same request may be sent again;
* 500: anything unexpected, logged with its traceback and an ``error_id`` to find it.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.crud import JobStateError
from backend.db.file_guard import DatabaseFileGuard
from backend.idempotency import HEADER, KeyReused
from backend.submit import InvalidRequest
from pft.errors import PftError

log = logging.getLogger("backend.api")


def _clean(error: dict) -> dict:
    msg = str(error.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return {"loc": list(error.get("loc", ())), "msg": msg, "type": error.get("type", "value_error")}


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [_clean(e) for e in exc.errors()]
    return JSONResponse(status_code=422, content=jsonable_encoder({"detail": detail}))


async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
    detail = [{"loc": list(exc.loc), "msg": exc.message, "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})


async def _key_reused(_: Request, exc: KeyReused) -> JSONResponse:
    detail = [{"loc": ["header", HEADER], "msg": str(exc), "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})


async def _pft_error(_: Request, exc: PftError) -> JSONResponse:
    field = getattr(exc, "field", None)
    loc = ["body", field] if field else ["body"]
    return JSONResponse(
        status_code=422,
        content={"detail": [{"loc": loc, "msg": str(exc), "type": "value_error"}]},
    )


async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
    # The request passed validation but holds a value the database refuses (PostgreSQL: a NUL
    # character in a text field); nothing was written (the transaction is rolled back).
    msg = "the request holds a value the database cannot store (such as a NUL character)"
    return JSONResponse(
        status_code=422, content={"detail": [{"loc": ["body"], "msg": msg, "type": "value_error"}]}
    )


BUSY_RETRY_AFTER_S = 2


def _busy(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database busy on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        status_code=503,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        content={"detail": "the database is busy; nothing was written, retry shortly"},
    )


async def _pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
    return _busy(request, exc)


async def _operational(request: Request, exc: OperationalError) -> JSONResponse:
    # SQLite answers "database is locked" once its busy timeout passed; anything else (a
    # database that went away, a broken schema) is unexpected and logged as such.
    if "database is locked" in str(exc.orig):
        return _busy(request, exc)
    return await _unexpected(request, exc)


async def _conflict(_: Request, exc: JobStateError) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "unhandled error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc
    )
    return JSONResponse(
        status_code=500,
        content={
            "detail": "internal server error; the server log has the details",
            "error_id": error_id,
        },
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InvalidRequest, _invalid)
    app.add_exception_handler(PftError, _pft_error)
    app.add_exception_handler(KeyReused, _key_reused)
    app.add_exception_handler(JobStateError, _conflict)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(PoolTimeout, _pool_timeout)
    app.add_exception_handler(OperationalError, _operational)
    app.add_exception_handler(Exception, _unexpected)


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body too large; the limit is {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse({"detail": self._message()}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI passes HTTPExceptions raised while reading the body through.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)


class DatabaseLostGuard:
    """ASGI middleware: 503 for every write (any method but GET, HEAD, OPTIONS) once the
    database file vanished or was replaced, instead of acknowledging what would be lost."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, guard: DatabaseFileGuard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") not in self.SAFE:
            problem = self.guard.problem()
            if problem is not None:
                response = JSONResponse({"detail": problem}, status_code=503)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

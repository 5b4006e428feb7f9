"""Slow clients are timed out: uvicorn's HTTP protocol with a deadline for receiving a request.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no read timeout:
a client that opens a connection and sends nothing, or half a request line, headers or body,
holds its socket forever (seen: 21,000 such connections made the reconciler hit "too many open
files"). The ASGI app cannot help, it is only called once the headers are complete, so the
guard sits in the protocol: each connection gets ``request_timeout_s`` to deliver a whole
request (from the connection's start, or the end of the previous response, to the last byte of
the body). A request that is complete is never cut, however long the route then takes.

Works with both of uvicorn's HTTP implementations (httptools, h11): it uses only what they
share (``cycle.more_body``, ``cycle.response_complete``, ``on_response_complete``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("backend.api")


def _base_protocol() -> type[asyncio.Protocol]:
    """uvicorn's default HTTP protocol ("auto": httptools where installed, else h11)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn without the [standard] extra
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def request_timeout_protocol(request_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class, closing connections that do not deliver a whole request
    within ``request_timeout_s`` (pass it as ``uvicorn.run(..., http=...)``)."""
    base: Any = _base_protocol()

    class RequestTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _request_deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._request_deadline = self.loop.call_later(request_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._request_deadline is not None:
                self._request_deadline.cancel()
                self._request_deadline = None

        def _expired(self) -> None:
            self._request_deadline = None
            cycle = self.cycle
            receiving = cycle is None or cycle.response_complete or cycle.more_body
            if receiving and not self.transport.is_closing():
                log.info(
                    "closing a connection from %s: no complete request within %.0f s",
                    self.client,
                    request_timeout_s,
                )
                if cycle is not None and not cycle.response_complete:
                    cycle.disconnected = True
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return RequestTimeoutProtocol

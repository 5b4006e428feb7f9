"""The dashboard's door: an ASGI middleware in front of Streamlit's own server (`dashboard.server`).

Three checks on every request, HTTP and the websocket (``/_stcore/stream``) alike:

- **Host** must be an allowed name (`Policy.host_allowed`): loopback names, the bind address,
  ``PFT_DASHBOARD_ALLOWED_HOSTS`` (a reverse proxy's public name) and, when the dashboard
  listens on every interface, any IP literal (DNS rebinding needs a name). A foreign name mapped
  to 127.0.0.1 gets 403, so a page on it cannot drive the dashboard.
- **Origin**, when the browser sends one, must name the same allowed host as Host: a page of
  another site cannot open the websocket or post the login form (403).
- **Login** (`Policy.login`), on whenever the dashboard is bound to anything but loopback or has
  a public name, and wherever ``PFT_DASHBOARD_LOGIN=always``: without a valid session cookie only
  the login page is served and the websocket is refused, so no page script runs and no API call
  is made. The credential is the API token, compared with `hmac.compare_digest`; the cookie holds
  an expiry and its HMAC under a key derived from the token (never the token), so it survives a
  dashboard restart and dies when the token changes.

Every response forbids framing (``X-Frame-Options: DENY``, ``frame-ancestors 'none'``), except
the custom components' pages, which the dashboard itself frames: those may be framed by the
same origin only, and a foreign page that frames the dashboard still gets nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
LOGIN_PATH = "/_pft/login"
LOGOUT_PATH = "/_pft/logout"
OPEN_PATHS = frozenset({"/_stcore/health"})  # health checks (launcher, compose) need no login
SELF_FRAMED_PREFIXES = ("/component/", "/_stcore/bidi-components/")  # the dashboard's iframes
COOKIE = "pft_dashboard_session"
MAX_FORM_BYTES = 8192
FAILED_LOGIN_DELAY_S = 0.5

DENY_FRAMING = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
]
SELF_FRAMING = [
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
]

_active = False  # set when a Door is built in this process (`active`)


def active() -> bool:
    """Whether this process serves the dashboard through the door (`dashboard.server`)."""
    return _active


def host_name(value: str | None) -> str | None:
    """The name of a ``Host`` value (``name``, ``name:port``, ``[v6]:port``), lower-case and
    without brackets; None when absent or malformed."""
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            return None
        return value[1:end] or None
    if value.count(":") > 1:  # a bare IPv6 literal
        return value
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(address: str) -> bool:
    """Whether a bind address reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_hosts(value: str) -> tuple[str, ...]:
    """``PFT_DASHBOARD_ALLOWED_HOSTS``: comma-separated names (an optional ``:port`` is
    ignored); ValueError naming an entry that is not a bare host name."""
    names = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name = host_name(entry)
        if name is None or "/" in entry or "@" in entry or " " in entry:
            raise ValueError(
                f"PFT_DASHBOARD_ALLOWED_HOSTS: {entry!r} is not a host name "
                "(expected names such as lab.example.org, comma-separated, no scheme or path)"
            )
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Policy:
    """Who may use the dashboard: allowed Host names, and whether a login is required."""

    bind: str
    allowed: frozenset[str]
    any_ip: bool  # bound to every interface: any IP-literal Host is allowed
    login: bool
    credential: Callable[[], str | None] = field(compare=False, repr=False)
    session_s: float = 12 * 3600

    def host_allowed(self, name: str | None) -> bool:
        if name is None:
            return False
        return name in self.allowed or (self.any_ip and _is_ip(name))

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """No Origin (not a browser's cross-origin request), or the same allowed host."""
        if origin is None:
            return True
        try:
            parts = urlsplit(origin)
            name = (parts.hostname or "").lower()
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and name == host and self.host_allowed(name)

    # -- the session cookie --

    def _key(self) -> bytes | None:
        token = self.credential()
        if not token:
            return None
        return hmac.new(token.encode(), b"pft-dashboard-session", hashlib.sha256).digest()

    def credential_ok(self, given: str) -> bool:
        token = self.credential()
        return bool(token) and hmac.compare_digest(given.strip().encode(), token.encode())

    def new_session(self, now: float | None = None) -> str:
        key = self._key()
        if key is None:
            raise RuntimeError("no credential to sign a session with")
        expires = str(int((now or time.time()) + self.session_s))
        return expires + "." + hmac.new(key, expires.encode(), hashlib.sha256).hexdigest()

    def session_ok(self, value: str | None, now: float | None = None) -> bool:
        key = self._key()
        if not value or key is None or "." not in value:
            return False
        expires, mac = value.split(".", 1)
        good = hmac.new(key, expires.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac.encode(), good.encode()) or not expires.isdigit():
            return False
        return int(expires) > (now or time.time())


def make_policy(bind: str, settings: Any) -> Policy:
    """The policy for a dashboard bound to ``bind`` with `dashboard.config.DashboardSettings`."""
    bind_name = host_name(bind) or ""
    wildcard = bind_name in WILDCARD_ADDRESSES or bind in WILDCARD_ADDRESSES
    public = tuple(settings.allowed_hosts())
    allowed = set(LOOPBACK_NAMES) | set(public)
    if not wildcard:
        allowed.add(bind_name)
    login = settings.dashboard_login == "always" or not is_loopback(bind_name) or bool(public)
    return Policy(
        bind=bind,
        allowed=frozenset(allowed),
        any_ip=wildcard,
        login=login,
        credential=settings.token,
        session_s=settings.dashboard_session_hours * 3600,
    )


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _cookie(headers: dict[str, str], name: str) -> str | None:
    try:
        jar = SimpleCookie(headers.get("cookie", ""))
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def _safe_next(value: str | None) -> str:
    """A local path to go back to after the login (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pft-lab · log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}}
input{{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}}
button{{padding:.5rem 1.2rem}}.error{{color:#b00020}}</style></head>
<body><h1>pft-lab</h1>
<p>This dashboard asks for a credential: the lab's API token (<code>PFT_API_TOKEN</code>, or
the <code>api-token</code> file in the lab's data folder).</p>
{message}
<form method="post" action="{action}" data-testid="pft-login">
<label for="credential">API token</label>
<input id="credential" name="credential" type="password" autocomplete="current-password"
 required autofocus>
<input type="hidden" name="next" value="{next}">
<button type="submit">Log in</button></form></body></html>
"""


def login_page(next_path: str, message: str = "") -> bytes:
    shown = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return LOGIN_PAGE.format(
        message=shown, action=LOGIN_PATH, next=html.escape(_safe_next(next_path))
    ).encode()


class Door:
    """ASGI middleware: Host/Origin checks, the login, and no framing (module docstring).

    ``policy`` is a `Policy`, or a function that makes it, called on the first request (when
    Streamlit's config has been loaded).
    """

    def __init__(self, app: ASGIApp, policy: Policy | Callable[[], Policy]) -> None:
        global _active
        _active = True
        self.app = app
        self._policy = policy

    @property
    def policy(self) -> Policy:
        if not isinstance(self._policy, Policy):
            self._policy = self._policy()
        return self._policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        policy = self.policy
        headers = _headers(scope)
        host = host_name(headers.get("host"))
        path = scope.get("path", "/")
        if not policy.host_allowed(host):
            why = f"Host {headers.get('host')!r} is not allowed (PFT_DASHBOARD_ALLOWED_HOSTS)"
            await self._refuse(scope, receive, send, 403, why)
            return
        if not policy.origin_allowed(headers.get("origin"), host):
            await self._refuse(scope, receive, send, 403, "cross-origin request refused")
            return
        if policy.login and path not in OPEN_PATHS:
            if path == LOGOUT_PATH and scope["type"] == "http":
                await self._logout(scope, send)
                return
            if path == LOGIN_PATH and scope["type"] == "http" and scope["method"] == "POST":
                await self._login(scope, receive, send, policy)
                return
            if not policy.session_ok(_cookie(headers, COOKIE)):
                if scope["type"] == "websocket":
                    await self._refuse(scope, receive, send, 403, "log in first")
                elif scope["method"] in ("GET", "HEAD"):
                    query = scope.get("query_string", b"").decode("latin-1")
                    back = path if path != LOGIN_PATH else "/"
                    back = back + ("?" + query if query and path != LOGIN_PATH else "")
                    await _respond(send, 401, login_page(back), "text/html; charset=utf-8")
                else:
                    await _respond(send, 401, b"log in first", "text/plain; charset=utf-8")
                return
        await self.app(scope, receive, _framing(send, path))

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, why: str
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accepting answers HTTP 403
            await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
            return
        await _respond(send, status, f"{status}: {why}\n".encode(), "text/plain; charset=utf-8")

    async def _login(self, scope: Scope, receive: Receive, send: Send, policy: Policy) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BYTES:
                await _respond(send, 413, b"form too large", "text/plain; charset=utf-8")
                return
            if not message.get("more_body"):
                break
        form = parse_qs(body.decode("utf-8", "replace"))
        given = (form.get("credential") or [""])[0]
        back = _safe_next((form.get("next") or ["/"])[0])
        if not policy.credential_ok(given):
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)  # a little friction for guessing
            why = (
                "Wrong credential."
                if policy.credential()
                else "No API token yet: the API writes it when it first starts."
            )
            await _respond(send, 401, login_page(back, why), "text/html; charset=utf-8")
            return
        secure = "; Secure" if _https(scope) else ""
        cookie = (
            f"{COOKIE}={policy.new_session()}; Path=/; HttpOnly; SameSite=Lax; "
            f"Max-Age={int(policy.session_s)}{secure}"
        )
        await _respond(
            send,
            303,
            b"",
            "text/plain",
            [(b"location", back.encode()), (b"set-cookie", cookie.encode())],
        )

    async def _logout(self, scope: Scope, send: Send) -> None:
        cookie = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
        await _respond(
            send, 303, b"", "text/plain", [(b"location", b"/"), (b"set-cookie", cookie.encode())]
        )


def _https(scope: Scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    return _headers(scope).get("x-forwarded-proto", "").lower() == "https"


def _framing(send: Send, path: str) -> Send:
    extra = SELF_FRAMING if path.startswith(SELF_FRAMED_PREFIXES) else DENY_FRAMING
    names = {name for name, _ in extra}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
            message = {**message, "headers": kept + extra}
        await send(message)

    return wrapped


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *DENY_FRAMING,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = [
    "COOKIE",
    "LOGIN_PATH",
    "LOGOUT_PATH",
    "Door",
    "Policy",
    "active",
    "host_name",
    "is_loopback",
    "make_policy",
    "parse_hosts",
]

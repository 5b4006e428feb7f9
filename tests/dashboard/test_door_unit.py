"""The dashboard's door (`dashboard.door`) in process: its policy from the settings, and the
middleware around a small Starlette app (HTTP and websocket, through Starlette's test client).
The real dashboard behind it, in Chromium, is tests/dashboard/test_door.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from dashboard import door
from dashboard.config import DashboardSettings

TOKEN = "unit-token-0123456789"
WS = "ws://127.0.0.1:8501/_stcore/stream"  # the test client's default host is "testserver"


def settings(**kw: object) -> DashboardSettings:
    return DashboardSettings(api_token=TOKEN, **kw)


async def _page(request: object) -> PlainTextResponse:
    return PlainTextResponse("the app")


async def _stream(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text("hello")
    await ws.close()


def client(bind: str, token: list[str] | None = None, **kw: object) -> TestClient:
    """The door around a tiny app, as a browser on ``http://127.0.0.1:8501`` would reach it."""
    tokens = token if token is not None else [TOKEN]
    policy = door.make_policy(bind, settings(**kw))
    policy = door.Policy(
        bind=policy.bind,
        allowed=policy.allowed,
        any_ip=policy.any_ip,
        login=policy.login,
        credential=lambda: tokens[0],
        session_s=policy.session_s,
    )
    app = Starlette(
        routes=[
            Route("/", _page),
            Route("/jobs", _page),
            Route("/component/parcoords/index.html", _page),
            Route("/_stcore/health", _page),
            WebSocketRoute("/_stcore/stream", _stream),
        ],
        middleware=[Middleware(door.Door, policy=policy)],
    )
    return TestClient(app, base_url="http://127.0.0.1:8501", follow_redirects=False)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("127.0.0.1:8501", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8501", "::1"),
        ("evil.example:80", "evil.example"),
        ("::1", "::1"),
        ("a:b", None),
        ("[::1", None),
        ("", None),
        (None, None),
    ],
)
def test_host_names(value: str | None, name: str | None) -> None:
    assert door.host_name(value) == name


def test_policy_on_loopback_has_no_login_and_loopback_names_only() -> None:
    policy = door.make_policy("127.0.0.1", settings())
    assert not policy.login and not policy.any_ip
    assert policy.allowed == {"127.0.0.1", "localhost", "::1"}
    assert not policy.host_allowed("evil.example")
    assert not policy.host_allowed("192.0.2.2")  # an IP that is not this dashboard's


def test_policy_off_loopback_asks_for_the_login() -> None:
    policy = door.make_policy("192.0.2.2", settings())
    assert policy.login and policy.host_allowed("192.0.2.2")
    wildcard = door.make_policy("0.0.0.0", settings())
    assert wildcard.login and wildcard.any_ip
    assert wildcard.host_allowed("10.1.2.3") and not wildcard.host_allowed("evil.example")
    assert DashboardSettings(api_token=TOKEN).door_policy(None).login  # Streamlit's default bind


def test_a_public_name_or_always_turns_the_login_on_on_loopback_too() -> None:
    proxied = door.make_policy("127.0.0.1", settings(dashboard_allowed_hosts="Lab.Example.org"))
    assert proxied.login and proxied.host_allowed("lab.example.org")
    forced = door.make_policy("127.0.0.1", settings(dashboard_login="always"))
    assert forced.login


@pytest.mark.parametrize("bad", ["https://lab.example.org", "lab.example.org/path", "a b"])
def test_a_bad_allowed_host_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ValidationError, match="PFT_DASHBOARD_ALLOWED_HOSTS"):
        settings(dashboard_allowed_hosts=bad)


def test_a_foreign_host_or_origin_gets_403_and_every_answer_forbids_framing() -> None:
    with client("127.0.0.1") as c:
        ok = c.get("/")
        assert ok.status_code == 200 and ok.text == "the app"
        assert ok.headers["x-frame-options"] == "DENY"
        assert ok.headers["content-security-policy"] == "frame-ancestors 'none'"
        foreign = c.get("/", headers={"host": "evil.example:8501"})
        assert foreign.status_code == 403 and "evil.example" in foreign.text
        assert foreign.headers["x-frame-options"] == "DENY"
        cross = c.get("/", headers={"origin": "http://evil.example:8501"})
        assert cross.status_code == 403
        # Origin and Host both allowed but different names: still cross-origin.
        assert c.get("/", headers={"origin": "http://localhost:8501"}).status_code == 403
        assert c.get("/", headers={"origin": "http://127.0.0.1:8501"}).status_code == 200
        component = c.get("/component/parcoords/index.html")
        assert component.headers["x-frame-options"] == "SAMEORIGIN"
        assert component.headers["content-security-policy"] == "frame-ancestors 'self'"


def test_the_websocket_checks_host_and_origin() -> None:
    with client("127.0.0.1") as c:
        with c.websocket_connect(WS) as ws:
            assert ws.receive_text() == "hello"
        with c.websocket_connect(WS, headers={"origin": "http://127.0.0.1:8501"}) as ws:
            assert ws.receive_text() == "hello"
        for headers in ({"origin": "http://evil.example:8501"}, {"host": "evil.example:8501"}):
            with pytest.raises(WebSocketDisconnect) as refused:
                with c.websocket_connect(WS, headers=headers):
                    pass
            assert refused.value.code == 1008


def test_the_login_gate() -> None:
    with client("0.0.0.0") as c:
        assert c.get("/_stcore/health").text == "the app"  # health checks need no login
        page = c.get("/jobs?x=1")
        assert page.status_code == 401 and 'data-testid="pft-login"' in page.text
        assert "the app" not in page.text and TOKEN not in page.text
        assert 'value="/jobs?x=1"' in page.text
        assert c.post("/jobs").status_code == 401
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(WS):
                pass
        wrong = c.post(door.LOGIN_PATH, data={"credential": "guess", "next": "/jobs"})
        assert wrong.status_code == 401 and "Wrong credential" in wrong.text
        assert door.COOKIE not in wrong.headers.get("set-cookie", "")
        right = c.post(door.LOGIN_PATH, data={"credential": TOKEN, "next": "/jobs"})
        assert right.status_code == 303 and right.headers["location"] == "/jobs"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and TOKEN not in cookie
        assert c.get("/jobs").text == "the app"  # the client keeps the cookie
        with c.websocket_connect(WS) as ws:
            assert ws.receive_text() == "hello"
        assert c.get(door.LOGOUT_PATH).status_code == 303
        c.cookies.clear()
        assert c.get("/jobs").status_code == 401


def test_the_login_goes_back_to_a_local_path_only() -> None:
    with client("0.0.0.0") as c:
        for target in ("//evil.example/", "https://evil.example/", "\\\\evil"):
            r = c.post(door.LOGIN_PATH, data={"credential": TOKEN, "next": target})
            assert r.status_code == 303 and r.headers["location"] == "/"


def test_sessions_are_signed_expire_and_die_with_the_token() -> None:
    tokens = [TOKEN]
    policy = door.Policy("0.0.0.0", frozenset(), True, True, lambda: tokens[0], session_s=60)
    session = policy.new_session()
    assert policy.session_ok(session) and TOKEN not in session
    expires, mac = session.split(".")
    assert not policy.session_ok(f"{int(expires) + 3600}.{mac}")  # a longer life is not signed
    assert not policy.session_ok(session, now=time.time() + 120)
    tokens[0] = "a-new-token"
    assert not policy.session_ok(session)
    none = door.Policy("0.0.0.0", frozenset(), True, True, lambda: None)
    assert not none.credential_ok("") and not none.session_ok(session)


def test_without_a_token_nobody_logs_in() -> None:
    with client("0.0.0.0", token=[""]) as c:
        r = c.post(door.LOGIN_PATH, data={"credential": "", "next": "/"})
        assert r.status_code == 401 and "No API token yet" in r.text


def test_the_launcher_starts_the_dashboard_behind_the_door() -> None:
    from streamlit.web.server.app_discovery import discover_asgi_app

    from lab.config import LauncherSettings
    from lab.launcher import _dashboard_command

    argv = _dashboard_command(LauncherSettings())
    target = Path(argv[argv.index("run") + 1])
    assert target.name == "server.py"
    found = discover_asgi_app(target)
    assert found.is_asgi_app and found.app_name == "app"

"""The dashboard's door in a real browser (headless Chromium through Playwright).

The dashboard runs as the launcher and compose run it, ``streamlit run dashboard/server.py``,
against the page tests' real backend (conftest.py), twice:

- bound to loopback (no login): a foreign name mapped to 127.0.0.1 in Chromium's resolver
  (DNS rebinding) gets a 403 page and no app, while 127.0.0.1 gets the app; a plain request with
  a foreign Host gets 403; a websocket handshake with a foreign Origin is refused; a page on the
  foreign name that frames the dashboard gets nothing inside the frame;
- bound to this machine's non-loopback address (``hostname -I``; 0.0.0.0 reached through
  127.0.0.1 where there is none): without a credential only the login shows, a wrong one is
  refused, the API token shows the app, and the token is in none of the page's HTML, scripts,
  responses or websocket messages.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.conftest import Backend
from tests.utils.streamlit_server import streamlit_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
UI_TIMEOUT_MS = 60_000
FOREIGN = "evil.example"
APP = "[data-testid='stSidebarNav']"  # the app rendered: its page navigation
LOGIN = "form[data-testid='pft-login']"

if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt install chromium, or set PFT_CHROMIUM)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")
websockets = pytest.importorskip("websockets")


def _non_loopback_address() -> str | None:
    """This machine's first non-loopback IPv4 address, or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    for address in out.stdout.split():
        if "." in address and not address.startswith("127."):
            return address
    return None


def _dashboard(backend: Backend, home: Path, bind: str, reach: str):  # noqa: ANN202
    """`streamlit run dashboard/server.py` bound to ``bind``; yields its URL through ``reach``."""
    env = {
        "PFT_API_URL": backend.url,
        "PFT_API_TOKEN": backend.token,
        "PFT_DATA_DIR": str(backend.data_dir),
    }
    return streamlit_server(env, home, bind=bind, reach=reach)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {FOREIGN} 127.0.0.1"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser: Any) -> Any:
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    return page


def _handshake(url: str, origin: str) -> str:
    """Opens ``/_stcore/stream`` with ``origin``: "open", or why it was refused (the sync
    client: Playwright's sync API holds this thread's event loop)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
    try:
        with connect(ws_url, origin=origin, subprotocols=["streamlit"], open_timeout=20):
            return "open"
    except InvalidStatus as exc:
        return f"refused {exc.response.status_code}"


@contextlib.contextmanager
def _framing_site(folder: Path, dashboard: str) -> Iterator[int]:
    """A page of another site (served on a free port) framing the dashboard's Jobs page, and a
    harmless page of its own as the control frame."""
    (folder / "own.html").write_text("<p id='own'>framed fine</p>")
    (folder / "frame.html").write_text(
        f"<iframe id='dash' src='{dashboard}/jobs' width=900 height=600></iframe>"
        "<iframe id='own' src='/own.html'></iframe>"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_loopback_dashboard_refuses_foreign_hosts_origins_and_framing(
    backend: Backend, browser: Any, tmp_path: Path
) -> None:
    with _dashboard(backend, tmp_path, "127.0.0.1", "127.0.0.1") as url:
        port = url.rsplit(":", 1)[1]
        # Plain HTTP: the Host header decides.
        own = httpx.get(url + "/", headers={"Host": f"127.0.0.1:{port}"})
        assert own.status_code == 200
        assert own.headers["x-frame-options"] == "DENY"
        assert own.headers["content-security-policy"] == "frame-ancestors 'none'"
        foreign = httpx.get(url + "/", headers={"Host": f"{FOREIGN}:{port}"})
        assert foreign.status_code == 403, foreign.text
        # The websocket: same origin opens, a foreign origin is refused.
        assert _handshake(url, url) == "open"
        assert _handshake(url, f"http://{FOREIGN}:{port}") == "refused 403"

        page = _page(browser)
        # DNS rebinding: the foreign name resolves to 127.0.0.1, the browser sends its Host.
        rebound = page.goto(f"http://{FOREIGN}:{port}/")
        assert rebound is not None and rebound.status == 403
        assert "not allowed" in page.inner_text("body")
        assert page.locator("script").count() == 0 and page.locator(APP).count() == 0
        # The same browser on the dashboard's own address gets the app (the check can fail).
        page.goto(url + "/")
        page.locator(APP).wait_for()

        # Framing: a page on the foreign site frames the Jobs page; the frame stays empty while
        # the site's own frame renders.
        with _framing_site(tmp_path, url) as site_port:
            framed: list[Any] = []
            page.on("response", lambda r: framed.append(r) if r.url == url + "/jobs" else None)
            page.goto(f"http://{FOREIGN}:{site_port}/frame.html", wait_until="load")
            page.frame_locator("iframe#own").locator("#own").wait_for()
            assert framed and framed[0].headers["x-frame-options"] == "DENY"
            assert framed[0].headers["content-security-policy"] == "frame-ancestors 'none'"
            dash = page.query_selector("iframe#dash").content_frame()
            assert dash is None or (
                not dash.url.startswith(url) and dash.locator("[data-testid='stApp']").count() == 0
            ), dash.url
        page.context.close()


def test_non_loopback_dashboard_shows_only_a_login_until_the_token_is_given(
    backend: Backend, browser: Any, tmp_path: Path
) -> None:
    address = _non_loopback_address()
    bind, reach = (address, address) if address else ("0.0.0.0", "127.0.0.1")
    with _dashboard(backend, tmp_path, bind, reach) as url:
        assert _handshake(url, url) == "refused 403"  # no session cookie: no websocket
        page = _page(browser)
        seen: list[Any] = []
        frames: list[bytes | str] = []
        page.on("response", lambda r: seen.append(r))
        page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f)))

        first = page.goto(url + "/jobs")
        assert first is not None and first.status == 401
        page.locator(LOGIN).wait_for()
        assert page.locator(APP).count() == 0 and page.locator("script").count() == 0

        page.fill("#credential", "not-the-token")
        page.click("button[type=submit]")
        page.get_by_role("alert").wait_for()
        assert "Wrong credential" in page.inner_text("[role=alert]")
        assert page.locator(APP).count() == 0

        page.fill("#credential", backend.token)
        page.click("button[type=submit]")
        page.locator(APP).wait_for()
        assert page.url == url + "/jobs"
        # The Jobs page rendered with the backend's data (the dashboard used the token).
        page.get_by_text("Jobs").first.wait_for()
        assert page.locator("[data-testid='stException']").count() == 0

        token = backend.token
        assert token not in page.content()
        bodies = []
        for response in seen:
            with contextlib.suppress(Exception):  # redirects and aborted loads have no body
                bodies.append((response.url, response.body()))
        for where, body in bodies:
            assert token.encode() not in body, where
        assert bodies and frames  # the scan saw the app's responses and websocket messages
        for frame in frames:
            payload = frame if isinstance(frame, bytes) else frame.encode()
            assert token.encode() not in payload
        page.context.close()

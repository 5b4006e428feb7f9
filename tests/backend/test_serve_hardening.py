"""`pft api` as a real process, hardened: docs served offline, slow clients timed out, a private
data folder, and a database file that vanishes or is replaced under the running API."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from contract.layout import DataLayout

from .conftest import REDIS_URL

pytestmark = pytest.mark.slow
REQUEST_TIMEOUT_S = 2  # PFT_REQUEST_TIMEOUT_S of the servers below
SUBMIT = {"model": "pft/vit-micro", "dataset": "synthetic"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Api:
    proc: subprocess.Popen
    port: int
    data: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    @property
    def auth(self) -> dict[str, str]:
        token = DataLayout.at(self.data).api_token.read_text().strip()
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def start_api(tmp_path: Path, queue_name: str) -> Iterator:
    started: list[Api] = []

    def start(name: str = "data") -> Api:
        port, data = _free_port(), tmp_path / name / "lab"  # neither folder exists yet
        env = {k: v for k, v in os.environ.items() if not k.startswith("PFT_")}
        env.update(
            PFT_DATA_DIR=str(data),
            PFT_BROKER_URL=REDIS_URL,
            PFT_QUEUE=queue_name,
            PFT_API_PORT=str(port),
            PFT_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
            PFT_RECONCILE_INTERVAL_S="0",
        )
        pft = Path(sys.executable).with_name("pft")
        proc = subprocess.Popen(
            [str(pft), "api"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            umask=0o022,  # the usual umask: the API must tighten what it creates itself
        )
        api = Api(proc, port, data)
        started.append(api)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                httpx.get(f"{api.base}/health", timeout=2)
                return api
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"the API did not start (exit {proc.poll()})")

    yield start
    for api in started:
        api.proc.terminate()
        out, _ = api.proc.communicate(timeout=20)
        assert "Traceback" not in out, out


def test_docs_render_from_same_origin_assets(start_api) -> None:
    api = start_api()
    origin = f"http://127.0.0.1:{api.port}"
    for page in ("docs", "redoc"):
        r = httpx.get(f"{api.base}/{page}", timeout=10)  # public, like the OpenAPI document
        assert r.status_code == 200, r.text
        html = r.text
        assert "cdn" not in html.lower() and "googleapis" not in html, html
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
        refs += re.findall(r"""url:\s*["']([^"']+)["']""", html)  # Swagger UI's spec URL
        refs += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)  # ReDoc's
        assert refs, html
        for ref in refs:
            assert ref.startswith("/") and not ref.startswith("//"), f"{page}: {ref}"
            asset = httpx.get(origin + ref, timeout=10)
            assert asset.status_code == 200, f"{page}: {ref} -> {asset.status_code}"
            assert asset.content, ref
    # The assets are public, but nothing else below the prefix is.
    assert httpx.get(f"{api.base}/jobs", timeout=10).status_code == 401
    assert httpx.get(f"{api.base}/docs/static/../jobs", timeout=10).status_code in (401, 404)


def _closed_by_server(sock: socket.socket, deadline_s: float) -> bool:
    """Whether the server closes ``sock`` within ``deadline_s`` (a deadline, not a timing)."""
    sock.settimeout(deadline_s)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


HALF_SENT = {
    "nothing": b"",  # connected, nothing sent
    "request-line": b"POST /api/v1/jobs HTT",
    "headers": b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",
    # Complete headers with the token: the route is waiting for the rest of the body.
    "body": b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
}


@pytest.mark.parametrize("part", list(HALF_SENT))
def test_a_half_sent_request_is_closed_by_the_server(start_api, part: str) -> None:
    api = start_api()
    partial = HALF_SENT[part].replace(b"{auth}", api.auth["Authorization"].encode())
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        if partial:
            sock.sendall(partial)
        assert _closed_by_server(sock, deadline_s=30 * REQUEST_TIMEOUT_S)
    # The server still serves, and wrote nothing for the half-sent submission.
    jobs = httpx.get(f"{api.base}/jobs", headers=api.auth, timeout=30)
    assert jobs.status_code == 200 and jobs.json()["total"] == 0


def test_the_data_folder_is_private(start_api) -> None:
    api = start_api()
    r = httpx.post(f"{api.base}/jobs", json=SUBMIT, headers=api.auth, timeout=30)
    assert r.status_code == 201, r.text
    layout = DataLayout.at(api.data)
    assert stat.S_IMODE(api.data.stat().st_mode) == 0o700
    for path in (layout.database, layout.api_token, layout.worker_token):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in api.data.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_a_loose_data_folder_is_tightened(start_api, tmp_path: Path) -> None:
    (tmp_path / "loose" / "lab").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "loose" / "lab", 0o755)
    api = start_api("loose")
    assert stat.S_IMODE(api.data.stat().st_mode) == 0o700


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_vanished_or_replaced_database_refuses_writes(start_api, fault: str) -> None:
    api = start_api()
    first = httpx.post(f"{api.base}/jobs", json=SUBMIT, headers=api.auth, timeout=30)
    assert first.status_code == 201, first.text
    assert httpx.get(f"{api.base}/health", timeout=30).json()["database_writable"] is True
    db = DataLayout.at(api.data).database
    if fault == "deleted":
        db.unlink()
    else:  # a restore that moves another file into place: same name, another inode
        shutil.copy2(db, db.with_name("restored.db"))
        os.replace(db.with_name("restored.db"), db)

    health = httpx.get(f"{api.base}/health", timeout=30)
    assert health.status_code == 503, health.text
    assert health.json()["database_writable"] is False
    assert health.json()["status"] == "degraded"
    assert fault.removesuffix("d") in health.headers["X-Database-Problem"]
    r = httpx.post(f"{api.base}/jobs", json=SUBMIT, headers=api.auth, timeout=30)
    assert r.status_code == 503, r.text
    assert "database file" in r.json()["detail"] and "restart" in r.json()["detail"]
    worker = DataLayout.at(api.data).worker_token.read_text().strip()
    r = httpx.post(
        f"{api.base}/worker/jobs/{first.json()['id']}/claim",
        json={"worker": "w"},
        headers={"Authorization": f"Bearer {worker}"},
        timeout=30,
    )
    assert r.status_code == 503, r.text
    # Without the token it is still a 401 first: the guard tells nothing to strangers.
    assert httpx.post(f"{api.base}/jobs", json=SUBMIT, timeout=30).status_code == 401

"""`pft api` as a real process: uvicorn on a free port, first-start tokens, migrations, auth,
and a stopped worker's half-sent report that blocks nobody."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contract.layout import DataLayout

from .conftest import REDIS_URL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pft_api_serves_with_generated_tokens(tmp_path: Path, queue_name: str) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFT_")}
    env.update(
        PFT_DATA_DIR=str(tmp_path),
        PFT_BROKER_URL=REDIS_URL,
        PFT_QUEUE=queue_name,
        PFT_API_PORT=str(port),
    )
    pft = Path(sys.executable).with_name("pft")
    proc = subprocess.Popen(
        [str(pft), "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, proc.poll()
        assert health.json()["status"] == "ok"
        assert health.json()["database_writable"] is True
        layout = DataLayout.at(tmp_path)
        for token_file in (layout.api_token, layout.worker_token):
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert layout.database.exists()
        assert httpx.get(f"{base}/jobs").status_code == 401
        auth = {"Authorization": f"Bearer {layout.api_token.read_text().strip()}"}
        r = httpx.get(f"{base}/catalog/strategies", headers=auth)
        assert r.status_code == 200 and len(r.json()) >= 12
        worker = {"Authorization": f"Bearer {layout.worker_token.read_text().strip()}"}
        assert httpx.get(f"{base}/jobs", headers=worker).status_code == 401
        r = httpx.post(f"{base}/worker/jobs/1/claim", json={"worker": "w"}, headers=worker)
        assert r.status_code == 404
        _a_stalled_report_blocks_no_write(base, port, auth, worker)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "Traceback" not in out, out


def _a_stalled_report_blocks_no_write(base: str, port: int, auth: dict, worker: dict) -> None:
    """A worker SIGSTOPped in the middle of a report holds a half-sent request, never a database
    lock: the API reads the whole body before it touches the database."""
    submit = {"model": "pft/vit-micro", "dataset": "synthetic"}
    job = httpx.post(f"{base}/jobs", json=submit, headers=auth, timeout=30).json()
    url = f"{base}/worker/jobs/{job['id']}"
    claim = httpx.post(f"{url}/claim", json={"worker": "stopped"}, headers=worker, timeout=30)
    token = claim.json()["claim"]
    body = json.dumps({"claim": token, "epoch": 1, "metrics": {"test_acc": 0.5}}).encode()
    head = (
        f"PUT {url.removeprefix(f'http://127.0.0.1:{port}')}/epochs/1 HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: {worker['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(head + body[: len(body) // 2])
        # Meanwhile every other write goes through: a user's submission, the job's heartbeat.
        other = httpx.post(f"{base}/jobs", json=submit, headers=auth, timeout=30)
        assert other.status_code == 201, other.text
        beat = httpx.post(f"{url}/heartbeat", json={"claim": token}, headers=worker, timeout=30)
        assert beat.status_code == 200, beat.text
        stalled.sendall(body[len(body) // 2 :])  # resumed (SIGCONT): the report lands
        status_line = stalled.recv(4096).split(b"\r\n", 1)[0]
    assert b" 204 " in status_line, status_line
    metrics = httpx.get(f"{base}/jobs/{job['id']}/metrics", headers=auth, timeout=30).json()
    assert [m["epoch"] for m in metrics] == [1]

"""`pft api` as a real process: uvicorn on a free port, first-start token, migrations, auth."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import REDIS_URL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pft_api_serves_with_a_generated_token(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFT_")}
    env.update(PFT_DATA_DIR=str(tmp_path), PFT_BROKER_URL=REDIS_URL, PFT_API_PORT=str(port))
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
        token_file = tmp_path / "api_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert (tmp_path / "lab.db").exists()
        assert httpx.get(f"{base}/jobs").status_code == 401
        auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        r = httpx.get(f"{base}/catalog/strategies", headers=auth)
        assert r.status_code == 200 and len(r.json()) >= 12
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "Traceback" not in out, out

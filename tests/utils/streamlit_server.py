"""A real dashboard process for browser tests: `streamlit run dashboard/server.py` (as `pft up`
starts it: the app behind its door) on a free port, talking to a test backend."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(
    env: dict[str, str], home: Path, *, bind: str = "127.0.0.1", reach: str | None = None
) -> Iterator[str]:
    """Runs the dashboard with ``env`` (over this process's environment, without any
    PFT_DASHBOARD_* door setting of its own), bound to ``bind``; yields its URL through
    ``reach`` (default: ``bind``) once ``/_stcore/health`` answers; stops it after."""
    port = _free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("PFT_DASHBOARD_")}
    full |= {"XDG_CACHE_HOME": str(home / "cache"), **env}  # the components' folder goes there
    log_path = home / f"streamlit-{port}.log"
    argv = [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "server.py")]
    argv += ["--server.port", str(port), "--server.address", bind, "--server.headless", "true"]
    argv += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=full, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://{reach or bind}:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the dashboard did not start:\n" + log_path.read_text())
            time.sleep(0.3)
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

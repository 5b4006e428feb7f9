"""Fixtures for the fault and abuse suite: real workers, a real API server, a Redis of our own.

Workers and the lab come from `tests.worker.conftest` (real ``celery worker`` processes in their
own process groups, a SQLite lab database in a temp folder, a queue unique to the test); this
module adds what the fault tests need on top:

* ``lab``: that lab on Redis database 11 of the shared server (127.0.0.1:6379), with enough
  attempts allowed that repeated kills are not turned into a failure by the reconciler;
* `ApiServer`: ``uvicorn backend.main:create_app`` in a subprocess, which a test can kill and
  start again on the same port;
* `OwnRedis`: a private ``redis-server`` (no persistence) on a free port, which a test may stop
  and start again. The shared Redis at 6379 is never stopped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from tests.lab.lab_process import free_port
from tests.worker.conftest import Lab, make_lab, pytest_runtest_makereport, wait_for

__all__ = [
    "ApiServer",
    "OwnRedis",
    "api_server",
    "drop_queue_keys",
    "own_redis",
    "pytest_runtest_makereport",
]

REDIS_URL = "redis://127.0.0.1:6379/11"  # this suite's database on the shared server
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with make_lab(tmp_path, REDIS_URL) as the_lab:
        allow_attempts(the_lab, 20)
        yield the_lab
    drop_queue_keys(the_lab.queue)


def drop_queue_keys(queue: str, url: str = REDIS_URL) -> None:
    """Deletes what kombu keeps for ``queue`` (the list and its bindings), nothing else."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    keys = list(client.scan_iter(match=f"*{queue}*", count=500))
    if keys:
        client.delete(*keys)


def allow_attempts(the_lab: Lab, attempts: int) -> None:
    """Raises ``PFT_MAX_ATTEMPTS`` for the in-test reconciler and the workers started later."""
    the_lab.settings = the_lab.settings.model_copy(update={"max_attempts": attempts})
    the_lab.env["PFT_MAX_ATTEMPTS"] = str(attempts)


# ------------------------------------------------------------------------------------------
# a private Redis


@dataclass
class OwnRedis:
    """``redis-server`` on a free loopback port, without persistence: a stop loses every message."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.directory)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ping, 15, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        try:
            client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        """SIGKILL, like a crashed broker (with ``--save ""`` a SIGTERM loses as much)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@contextmanager
def own_redis(directory: Path) -> Iterator[OwnRedis]:
    directory.mkdir(parents=True, exist_ok=True)
    server = OwnRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------
# a real API server


@dataclass
class ApiServer:
    """The API under uvicorn in a subprocess (its own process group), restartable in place."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: "rel-" + secrets.token_urlsafe(16))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=kw.pop("timeout", 30),
            **kw,
        )

    def start(self, timeout: float = 60) -> None:
        argv = [sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        env = {**self.env, "PFT_API_TOKEN": self.token}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("the API did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


@contextmanager
def api_server(the_lab: Lab, *, reconcile_interval_s: float = 0) -> Iterator[ApiServer]:
    """The API on the lab's database, broker and queue; stopped (SIGKILL) afterwards."""
    env = {
        **the_lab.env,
        "PFT_RECONCILE_INTERVAL_S": str(reconcile_interval_s),
        "PFT_ENQUEUE_GRACE_S": "0",
    }
    server = ApiServer(env, the_lab.root / "api.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()

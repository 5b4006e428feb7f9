"""Fixtures for the fault and abuse suite: real workers, a real API server, a Redis of our own.

The lab comes from `tests.worker.conftest` (a real API under uvicorn with its reconciler thread,
real ``celery worker`` processes in their own process groups that report to it over HTTP, a
queue unique to the test); this module adds what the fault tests need on top:

* ``lab``: that lab with enough attempts allowed that repeated kills are not turned into a
  failure by the reconciler;
* `OwnRedis`: a private ``redis-server`` (no persistence) on a free port, which a test may stop
  and start again. The shared Redis at 6379 is never stopped.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.worker.conftest import (
    SYSTEM_REDIS,
    Lab,
    drop_queue_keys,
    free_port,
    make_lab,
    pytest_runtest_makereport,
    wait_for,
)

__all__ = ["REDIS_URL", "OwnRedis", "drop_queue_keys", "own_redis", "pytest_runtest_makereport"]

REDIS_URL = SYSTEM_REDIS  # database 12 of the shared server; every test has its own queue


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with make_lab(tmp_path, REDIS_URL, max_attempts=20) as the_lab:
        yield the_lab


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

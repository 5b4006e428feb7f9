"""Starts a real Celery worker (``pft worker``): `worker_argv` is the one command line that the
launcher, the tests and ``pft worker`` run (prefork, one process per device, no prefetch, the
``PFT_QUEUE`` queue; no mingle or gossip: the API coordinates the workers)."""

from __future__ import annotations

import os
import sys

from worker.config import get_settings


def worker_argv(
    concurrency: int = 1, *, queue: str | None = None, hostname: str | None = None
) -> list[str]:
    """The argv of ``python -m celery ... worker`` for ``concurrency`` job processes."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-l", "INFO"]
    argv += ["--pool", "prefork", "--concurrency", str(concurrency), "--prefetch-multiplier", "1"]
    argv += ["--queues", queue or get_settings().queue, "--without-gossip", "--without-mingle"]
    return argv + (["--hostname", hostname] if hostname else [])


def run_worker(
    concurrency: int = 1, *, queue: str | None = None, hostname: str | None = None
) -> None:
    """Replaces this process with the Celery worker (signals then go straight to Celery)."""
    argv = worker_argv(concurrency, queue=queue, hostname=hostname)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)

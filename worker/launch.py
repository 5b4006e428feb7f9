"""Starts a real Celery worker for pft jobs (``pft worker``).

The command line is built in one place (:func:`worker_argv`) so that the launcher, the tests and
``pft worker`` run exactly the same worker: prefork pool, one process per device, no prefetch
beyond free processes, the ``PFT_QUEUE`` queue. Mingle and gossip are off: workers need nothing
from each other (the database coordinates them), and they start faster without.
"""

from __future__ import annotations

import os
import sys

from worker.config import get_settings


def worker_argv(
    concurrency: int = 1,
    *,
    queue: str | None = None,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """The argv of ``python -m celery ... worker`` for ``concurrency`` job processes."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "--queues",
        queue or get_settings().queue,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    return argv


def run_worker(
    concurrency: int = 1, *, queue: str | None = None, hostname: str | None = None
) -> None:
    """Replaces this process with the Celery worker (signals then go straight to Celery)."""
    argv = worker_argv(concurrency, queue=queue, hostname=hostname)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)

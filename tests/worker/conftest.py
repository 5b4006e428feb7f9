"""Fixtures for worker tests: a real Redis, a SQLite lab database and real `celery worker`s.

Workers are separate processes started with the same command line as ``pft worker``
(`worker.runner.worker_argv`: prefork pool, ``-c 1``), each in its own process group so a test
can SIGKILL the whole group. Tests use Redis database 12 on 127.0.0.1:6379 and a queue name
unique to the test, so other people's workers and queues never see these jobs (and when no
Redis answers there, an embedded one from `lab.redis_server`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from backend import crud
from backend.core.config import Settings
from backend.db.models import Job
from backend.db.session import migrate, session_scope
from backend.enqueue import enqueue_job
from worker.runner import worker_argv

SYSTEM_REDIS = "redis://127.0.0.1:6379/12"
TINY = {
    "model": "pft/vit-micro",
    "model_overrides": {},
    "pretrained": False,
    "dataset": "synthetic",
    "strategy": {"name": "full"},
    "hparams": {"epochs": 2, "batch_size": 32},
    "shifts": [],
}


def tiny_config(**changes: Any) -> dict[str, Any]:
    """A fine-tuning job config for the tiny test model (hparams merged, the rest replaced)."""
    hparams = {**TINY["hparams"], **changes.pop("hparams", {})}
    return {**TINY, **changes, "hparams": hparams}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    """Polls until ``predicate()`` is truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Lab:
    """A temporary lab: data folder, database, broker URL, queue and the workers started."""

    root: Path
    broker_url: str
    queue: str
    env: dict[str, str]
    settings: Settings
    workers: list[WorkerProcess] = field(default_factory=list)

    # -- database -------------------------------------------------------------------------
    def create_job(self, kind: str = "finetune", config: dict[str, Any] | None = None) -> int:
        with session_scope(self.settings.db_url) as s:
            job = crud.create_job(s, kind=kind, config=config or tiny_config())
            if kind == "soup":
                crud.create_soup(
                    s,
                    job_id=job.id,
                    method=job.config["method"],
                    ingredients=job.config["ingredients"],
                    shifts=job.config.get("shifts", []),
                )
            return job.id

    def job(self, job_id: int) -> Job:
        with session_scope(self.settings.db_url) as s:
            job = crud.get_job(s, job_id=job_id)
            assert job is not None
            s.expunge(job)
            return job

    def session(self):  # noqa: ANN201 (context manager)
        return session_scope(self.settings.db_url)

    def wait_status(self, job_id: int, statuses: tuple[str, ...], timeout: float) -> Job:
        job = wait_for(
            lambda: (j := self.job(job_id)).status in statuses and j,
            timeout,
            f"job {job_id} to become {' or '.join(statuses)}",
        )
        return job

    # -- broker ---------------------------------------------------------------------------
    def enqueue(self, job_id: int) -> None:
        """Sends the job the way the API does (`backend.enqueue`)."""
        assert enqueue_job(job_id, settings=self.settings)
        with self.session() as s:
            crud.mark_enqueued(s, job_ids=[job_id])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.broker_url)

    def queue_length(self) -> int:
        return int(self.redis().llen(self.queue))

    # -- workers --------------------------------------------------------------------------
    def start_worker(self, name: str = "w1", wait_ready: bool = True) -> WorkerProcess:
        log_path = self.root / f"worker-{name}.log"
        argv = worker_argv(1, queue=self.queue, hostname=f"{name}@{self.queue}")
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg hits parent + pool
            )
        worker = WorkerProcess(name, proc, log_path)
        self.workers.append(worker)
        if wait_ready:
            wait_for(
                lambda: " ready." in worker.log() or not worker.alive(),
                60,
                f"worker {name} to start",
                poll=0.2,
            )
            assert worker.alive(), f"worker {name} exited:\n{worker.log()[-3000:]}"
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log()[-4000:]}" for w in self.workers)

    def stop_workers(self) -> None:
        for w in self.workers:
            w.kill_group(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill_group(signal.SIGKILL)
                w.proc.wait(5)


def _system_redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(SYSTEM_REDIS, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _system_redis_available():
        yield SYSTEM_REDIS
        return
    from lab.redis_server import start_redis

    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def lab(tmp_path: Path, broker_url: str) -> Iterator[Lab]:
    with make_lab(tmp_path, broker_url) as the_lab:
        yield the_lab


@contextmanager
def make_lab(tmp_path: Path, broker_url: str) -> Iterator[Lab]:
    """A lab in ``tmp_path`` on ``broker_url``; stops its workers and empties its queue after."""
    queue = f"pft-test-{uuid.uuid4().hex[:10]}"
    data = tmp_path / "data"
    db_url = f"sqlite:///{data / 'lab.db'}"
    env = {
        **os.environ,
        "PFT_DATA_DIR": str(data),
        "PFT_DATABASE_URL": db_url,
        "PFT_BROKER_URL": broker_url,
        "PFT_QUEUE": queue,
        "PFT_DEVICE": "cpu",  # no GPU on the test machine
        "PFT_HEARTBEAT_INTERVAL_S": "0.5",
        "PFT_HEARTBEAT_STALE_S": "3",
        "OMP_NUM_THREADS": "1",  # others share these cores
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PFT_ARTIFACT_URL", None)
    settings = Settings(
        data_dir=data,
        database_url=db_url,
        broker_url=broker_url,
        queue=queue,
        heartbeat_stale_s=3,
        enqueue_grace_s=0,
    )
    migrate(db_url)
    the_lab = Lab(tmp_path, broker_url, queue, env, settings)
    try:
        yield the_lab
    finally:
        the_lab.stop_workers()
        client = the_lab.redis()
        client.delete(queue)
        for key in client.scan_iter(match=f"{queue}\x06\x16*"):
            client.delete(key)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    """On failure, attach the workers' logs (the only view into the other processes)."""
    if call.when == "call" and call.excinfo is not None:
        the_lab = item.funcargs.get("lab") if hasattr(item, "funcargs") else None
        if isinstance(the_lab, Lab):
            item.add_report_section("call", "worker logs", the_lab.logs())

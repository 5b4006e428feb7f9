"""Fixtures for worker tests: a real Redis, a real API process and real `celery worker`s.

A `Lab` is a temporary data folder with the API running under uvicorn in a subprocess (its
SQLite database, its reconciler thread, a users' and a workers' token) and workers started with
the same command line as ``pft worker`` (`lab.worker_command.worker_argv`), each in its own process
group so that a test can SIGKILL or SIGSTOP the whole group. Workers get the API's URL and the
worker token, never a database URL: everything they write goes through the worker routes.

Jobs are submitted through the API (``POST /api/v1/jobs``) like a user would; jobs the API would
refuse (a bad dataset, a corrupt ingredient) are inserted into the database directly, to test
that the worker refuses them too. Tests use Redis database 12 on 127.0.0.1:6379 (or an embedded
Redis when none answers there) and a queue unique to the test.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from backend import crud
from backend.core.config import ApiSettings
from backend.db.session import session_scope
from backend.enqueue import enqueue_job
from contract.api import AnglesPublic, ArtifactPublic, JobPublic, MetricPublic
from contract.vocab import API_PREFIX, TERMINAL_STATUSES, JobKind
from lab.worker_command import worker_argv
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.store import ArtifactStore

SYSTEM_REDIS = "redis://127.0.0.1:6379/12"
ROOT = Path(__file__).resolve().parents[2]
FINAL = tuple(TERMINAL_STATUSES)
STALE_S = 3.0  # PFT_HEARTBEAT_STALE_S of every test lab
TINY = {"model": "pft/vit-micro", "dataset": "synthetic", "pretrained": False}
TINY_HPARAMS = {"epochs": 2, "batch_size": 32}
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def tiny_request(**changes: Any) -> dict[str, Any]:
    """A ``POST /jobs`` body for the tiny test model (hparams merged, the rest replaced)."""
    hparams = {**TINY_HPARAMS, **changes.pop("hparams", {})}
    return {**TINY, "strategy": {"name": "full"}, **changes, "hparams": hparams}


def tiny_spec(**changes: Any) -> dict[str, Any]:
    """A stored fine-tuning spec (`FinetuneSpec.to_dict`), for jobs inserted behind the API."""
    hparams = Hparams.from_dict({**TINY_HPARAMS, **changes.pop("hparams", {})})
    return FinetuneSpec(**{**TINY, **changes}, hparams=hparams).to_dict()


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class ApiServer:
    """The API under uvicorn in a subprocess (its own process group), restartable in place."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.env["PFT_API_TOKEN"]

    @property
    def worker_token(self) -> str:
        return self.env["PFT_WORKER_TOKEN"]

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        """An HTTP client of ``/api/v1`` with the users' token (or ``token``)."""
        return httpx.Client(
            base_url=self.url + API_PREFIX,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=kw.pop("timeout", 30),
            **kw,
        )

    def start(self, timeout: float = 90) -> None:
        argv = [sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + API_PREFIX + "/health", timeout=2).status_code == 200:
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
        _kill_group(self.proc, sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


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
        _kill_group(self.proc, sig)

    def pool_pids(self) -> list[int]:
        """The pids of the worker's pool processes (children of the Celery parent)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]


@dataclass
class Lab:
    """A temporary lab: data folder, a running API, broker URL, queue and the workers started."""

    root: Path
    broker_url: str
    queue: str
    worker_env: dict[str, str]
    api: ApiServer
    settings: ApiSettings  # what the API runs with (for the backend helpers tests call)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    # -- the users' API -------------------------------------------------------------------
    def submit(self, body: dict[str, Any], path: str = "/jobs") -> int:
        with self.api.client() as c:
            r = c.post(path, json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"] if path == "/jobs" else r.json()["job_id"])

    def create_job(self, **changes: Any) -> int:
        """A tiny fine-tuning job submitted through ``POST /jobs`` (queued and enqueued)."""
        return self.submit(tiny_request(**changes))

    def get(self, path: str, **params: Any) -> Any:
        with self.api.client() as c:
            r = c.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def job(self, job_id: int) -> JobPublic:
        return JobPublic.model_validate(self.get(f"/jobs/{job_id}"))

    def metrics(self, job_id: int) -> list[MetricPublic]:
        return [MetricPublic.model_validate(m) for m in self.get(f"/jobs/{job_id}/metrics")]

    def epochs(self, job_id: int) -> list[int]:
        return [m.epoch for m in self.metrics(job_id)]

    def angles(self, job_id: int) -> AnglesPublic:
        return AnglesPublic.model_validate(self.get(f"/jobs/{job_id}/angles"))

    def artifacts(self, job_id: int) -> dict[str, ArtifactPublic]:
        rows = [ArtifactPublic.model_validate(a) for a in self.get(f"/jobs/{job_id}/artifacts")]
        return {a.kind: a for a in rows}

    def file(self, artifact: ArtifactPublic, store: Path | None = None) -> Path:
        """Where a recorded artifact lies in the (default: the lab's local) artifact store."""
        return (store or self.data / "artifacts") / artifact.path

    def run_dir(self, job_id: int, store: Path | None = None) -> Path:
        """The job's latest attempt folder in the (default: the lab's local) artifact store."""
        found = ArtifactStore(str(store or self.data / "artifacts")).latest_dir(job_id)
        return found if found is not None else Path("/nonexistent")

    def post(self, path: str) -> JobPublic:
        with self.api.client() as c:
            r = c.post(path)
        assert r.status_code == 200, r.text
        return JobPublic.model_validate(r.json())

    def wait_status(self, job_id: int, statuses: tuple[str, ...], timeout: float) -> JobPublic:
        return wait_for(
            lambda: (j := self.job(job_id)).status in statuses and j,
            timeout,
            f"job {job_id} to become {' or '.join(statuses)}",
            poll=0.2,
        )

    # -- behind the API: jobs it would refuse, and the broker ------------------------------
    def session(self):  # noqa: ANN201 (context manager)
        return session_scope(self.settings.db_url)

    def insert_job(self, kind: JobKind, spec: dict[str, Any]) -> int:
        """A queued job written straight into the database (not enqueued: see `enqueue`)."""
        with self.session() as s:
            job = crud.create_job(s, kind=kind, config=spec)
            if kind == JobKind.SOUP:
                crud.create_soup(
                    s,
                    job_id=job.id,
                    method=spec["method"],
                    ingredients=spec["ingredients"],
                    shifts=spec.get("shifts", []),
                )
            return job.id

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
    def start_worker(
        self,
        name: str = "w1",
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        wrap: list[str] | None = None,
    ) -> WorkerProcess:
        """A real Celery worker (``pft worker``'s command line; ``wrap`` runs it through
        another command, e.g. one that moves it into a cgroup first)."""
        log_path = self.root / f"worker-{name}.log"
        argv = worker_argv(1, queue=self.queue, hostname=f"{name}@{self.queue}")
        argv = [*(wrap or []), *argv]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env={**self.worker_env, **(env or {})},
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
                90,
                f"worker {name} to start",
                poll=0.2,
            )
            assert worker.alive(), f"worker {name} exited:\n{worker.log()[-3000:]}"
        return worker

    def logs(self) -> str:
        parts = [f"--- {w.name} ---\n{w.log()[-4000:]}" for w in self.workers]
        if self.api.log_path.exists():
            parts.append(f"--- api ---\n{self.api.log_path.read_text()[-3000:]}")
        return "\n".join(parts)

    def stop_workers(self) -> None:
        for w in self.workers:
            w.kill_group(signal.SIGCONT)  # a stopped group cannot act on SIGTERM
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


def _clean_env() -> dict[str, str]:
    """This process's environment without any PFT_* setting (the labs set their own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PFT_")}


@contextmanager
def make_lab(
    tmp_path: Path,
    broker_url: str,
    *,
    max_attempts: int = 3,
    reconcile_interval_s: float = 0.5,
    database_url: str | None = None,
) -> Iterator[Lab]:
    """A lab in ``tmp_path`` on ``broker_url`` with its API running (on ``database_url``, by
    default a SQLite file in its data folder); stops its workers and the API and empties its
    queue afterwards."""
    queue = f"pft-test-{uuid.uuid4().hex[:10]}"
    data = tmp_path / "data"
    db_url = database_url or f"sqlite:///{data / 'lab.db'}"
    shared = {
        **_clean_env(),
        "PFT_DATA_DIR": str(data),
        "PFT_BROKER_URL": broker_url,
        "PFT_QUEUE": queue,
        "PFT_HEARTBEAT_STALE_S": str(STALE_S),
        "PFT_WORKER_TOKEN": "worker-" + secrets.token_urlsafe(16),
        "OMP_NUM_THREADS": "1",  # others share these cores
        "PYTHONUNBUFFERED": "1",
    }
    api = ApiServer(
        {
            **shared,
            "PFT_DATABASE_URL": db_url,
            "PFT_API_TOKEN": "users-" + secrets.token_urlsafe(16),
            "PFT_MAX_ATTEMPTS": str(max_attempts),
            "PFT_RECONCILE_INTERVAL_S": str(reconcile_interval_s),
            "PFT_ENQUEUE_GRACE_S": "2",
        },
        tmp_path / "api.log",
    )
    api.env["PFT_API_PORT"] = str(api.port)
    worker_env = {
        **shared,
        "PFT_API_URL": api.url,
        "PFT_DEVICE": "cpu",  # no GPU on the test machine
        "PFT_HEARTBEAT_INTERVAL_S": "0.5",
        "PFT_TORCH_THREADS": "1",
    }
    settings = ApiSettings(
        data_dir=data,
        database_url=db_url,
        broker_url=broker_url,
        queue=queue,
        heartbeat_stale_s=STALE_S,
        max_attempts=max_attempts,
        enqueue_grace_s=0,
    )
    data.mkdir(parents=True, exist_ok=True)
    api.start()
    the_lab = Lab(tmp_path, broker_url, queue, worker_env, api, settings)
    try:
        yield the_lab
    finally:
        the_lab.stop_workers()
        api.stop()
        drop_queue_keys(queue, broker_url)


def drop_queue_keys(queue: str, url: str) -> None:
    """Deletes what kombu keeps for ``queue`` (the list and its bindings), nothing else."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        keys = list(client.scan_iter(match=f"*{queue}*", count=500))
        if keys:
            client.delete(*keys)
    except (redis.RedisError, OSError):
        pass  # a private Redis that a test already stopped


def faketime_env(offset: str) -> dict[str, str]:
    """The environment that runs a process with its clock moved by ``offset`` ("+1h", "-1h")."""
    if not FAKETIME_LIB.is_file():
        pytest.skip(
            f"libfaketime is not installed ({FAKETIME_LIB}); apt-get install faketime "
            "(scripts/install-system-packages.sh installs it)"
        )
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": offset, "FAKETIME_DONT_RESET": "1"}


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    """On failure, attach the workers' and the API's logs (the only view into them)."""
    if call.when == "call" and call.excinfo is not None:
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if isinstance(value, Lab):
                item.add_report_section("call", "lab logs", value.logs())

"""A real backend for the dashboard's page tests, fed by the real engine.

The API runs as uvicorn in a subprocess on a free port, with a temporary data folder (SQLite)
and the real Redis on database 13 with a queue of its own (``pft-dashboard-<random>``), so that
jobs queued here are never picked up by other tests' workers; only that queue's keys are
deleted afterwards (others share the Redis server).

No Celery worker runs here. Where a page needs finished jobs, `Engine` plays the worker: it
claims the job on the worker routes, runs the job's own spec with `pft.jobs.runner.run` (the
tiny ``pft/vit-micro`` on small local datasets, CPU) and reports what the run returned
(epochs with their angle rows, final angle rows, artifacts, soup trace) through the same
routes. So the pages render exactly what a worker would have recorded. Runs are cached per
spec for the session.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.layout import DataLayout
from contract.vocab import API_PREFIX, WORKER_ROUTES, JobStatus

REDIS_URL = "redis://127.0.0.1:6379/13"
WORKER = "dashboard-test"
MODEL = "pft/vit-micro"
DATASET = "synthetic"


@dataclass
class Backend:
    url: str
    token: str
    data_dir: Path
    db_url: str = ""  # for tests that read the database itself (tests/reliability)
    queue: str = ""  # the Celery queue its jobs are sent to
    worker_token: str = ""

    def client(self) -> httpx.Client:
        """The users' client (the dashboard's token)."""
        return httpx.Client(
            base_url=self.url + API_PREFIX,
            timeout=10,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def worker(self) -> httpx.Client:
        """A worker's client of the worker routes (the worker token)."""
        return httpx.Client(
            base_url=self.url + API_PREFIX + WORKER_ROUTES,
            timeout=30,
            headers={"Authorization": f"Bearer {self.worker_token}"},
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drop_queue(queue: str) -> None:
    """Deletes this test backend's queue and its bindings, nothing else."""
    try:
        import redis

        r = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        keys = list(r.scan_iter(match=f"*{queue}*", count=500))
        if keys:
            r.delete(*keys)
    except Exception:  # noqa: BLE001 - cleanup only; a missing Redis fails the tests anyway
        pass


@contextmanager
def running_backend(data_dir: Path) -> Iterator[Backend]:
    """uvicorn serving `backend.main:create_app` on a free port until the block ends."""
    port = _free_port()
    token = "dash-" + secrets.token_urlsafe(16)
    worker_token = "dash-worker-" + secrets.token_urlsafe(16)
    queue = f"pft-dashboard-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "PFT_DATA_DIR": str(data_dir),
        "PFT_API_TOKEN": token,
        "PFT_WORKER_TOKEN": worker_token,
        "PFT_BROKER_URL": REDIS_URL,
        "PFT_QUEUE": queue,
        "PFT_RECONCILE_INTERVAL_S": "0",
    }
    env.pop("PFT_DATABASE_URL", None)
    log = (data_dir / "api.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + API_PREFIX + "/health", timeout=2).status_code in (200, 503):
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the backend did not start:\n" + (data_dir / "api.log").read_text()[-3000:])
        time.sleep(0.2)
    try:
        db_url = DataLayout.at(data_dir).sqlite_url
        yield Backend(url, token, data_dir, db_url, queue, worker_token)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        _drop_queue(queue)


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with running_backend(tmp_path_factory.mktemp("pft-dashboard-data")) as b:
        yield b


def forget_caches() -> None:
    """Drops the dashboard's cached settings, API client and fetched data."""
    import streamlit as st

    from dashboard.client import get_client
    from dashboard.config import get_settings

    get_settings.cache_clear()
    get_client.clear()
    st.cache_data.clear()


def point_dashboard_at(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFT_API_URL", backend.url)
    monkeypatch.setenv("PFT_API_TOKEN", backend.token)
    monkeypatch.setenv("PFT_DATA_DIR", str(backend.data_dir))
    forget_caches()


@pytest.fixture
def dashboard_env(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """The dashboard, talking to the shared test backend."""
    point_dashboard_at(backend, monkeypatch)
    yield backend
    forget_caches()


def submit_experiment(
    backend: Backend, strategies: list[dict], seeds: list[int] | None = None, **extra: Any
) -> dict:
    """``POST /experiments`` as a user would (the dashboard's own submit path)."""
    body = {
        "model": MODEL,
        "dataset": DATASET,
        "strategies": strategies,
        "seeds": seeds or [0],
        "hparams": {"epochs": 2},
        **extra,
    }
    with backend.client() as c:
        r = c.post("/experiments", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response


def claim(backend: Backend, job_id: int) -> dict:
    """Takes the job on the worker routes; the `contract.api.Claim`, as JSON."""
    with backend.worker() as w:
        return _ok(w.post(f"/jobs/{job_id}/claim", json={"worker": WORKER})).json()


def heartbeat(backend: Backend, job_id: int, token: str, progress: float, **info: Any) -> dict:
    with backend.worker() as w:
        body = {"claim": token, "progress": progress, "info": info}
        return _ok(w.post(f"/jobs/{job_id}/heartbeat", json=body)).json()


def fail_job(backend: Backend, job_id: int, error: str) -> None:
    """A claimed attempt that ended in an error, reported as a worker reports it."""
    token = claim(backend, job_id)["claim"]
    with backend.worker() as w:
        body = {"claim": token, "status": JobStatus.FAILED.value, "error": error}
        _ok(w.post(f"/jobs/{job_id}/finish", json=body))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Run:
    """One real run of the engine: its `pft.jobs.specs.JobResult` and its folder."""

    result: Any
    out_dir: Path


@dataclass
class Engine:
    """The engine as a worker drives it: claim, run the job's spec, report the result."""

    root: Path
    runs: dict[str, Run] = field(default_factory=dict)

    def run(self, kind: str, spec: dict, inputs: dict[int, Path] | None = None) -> Run:
        """Runs a spec once per session (the same spec replays the same run)."""
        from pft.jobs.runner import run
        from pft.jobs.specs import spec_from_dict

        key = json.dumps(
            [kind, spec, sorted((i, str(p)) for i, p in (inputs or {}).items())], sort_keys=True
        )
        if key not in self.runs:
            out_dir = self.root / f"run-{len(self.runs)}"
            result = run(spec_from_dict(kind, spec), out_dir, device="cpu", inputs=inputs)
            self.runs[key] = Run(result, out_dir)
        return self.runs[key]

    def finish(self, backend: Backend, job_id: int, replay: Run | None = None) -> Run:
        """Claims ``job_id``, runs its spec (or replays ``replay``, a run of another job) and
        reports the run's epochs, angles, artifacts and outcome on the worker routes."""
        given = claim(backend, job_id)
        inputs = {int(i): Path(ref["location"]) for i, ref in given["inputs"].items()}
        done = replay or self.run(given["kind"], given["spec"], inputs)
        report(backend, job_id, given["claim"], done)
        return done


def report(backend: Backend, job_id: int, token: str, done: Run) -> None:
    """What a worker sends for a finished run: one report per epoch, then the finish."""
    result = done.result
    epochs = [
        {
            "epoch": int(m["epoch"]),
            "metrics": {k: v for k, v in m.items() if k != "epoch"},
            "angles": result.trajectory.get(int(m["epoch"]), []),
        }
        for m in result.epochs
    ]
    artifacts = []
    for kind, rel in result.artifacts.items():
        path = done.out_dir / rel
        artifacts.append(
            {
                "kind": kind,
                "location": str(path),
                "size_bytes": path.stat().st_size,
                "sha256": _sha256(path),
            }
        )
    with backend.worker() as w:
        for epoch in epochs:
            _ok(w.put(f"/jobs/{job_id}/epochs/{epoch['epoch']}", json={"claim": token, **epoch}))
        finish = {
            "claim": token,
            "status": JobStatus.SUCCEEDED.value,
            "result": result.summary,
            "epochs": epochs,
            "angles": result.angles,
            "artifacts": artifacts,
            "soup": result.soup,
        }
        _ok(w.post(f"/jobs/{job_id}/finish", json=json.loads(json.dumps(finish, default=str))))


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(tmp_path_factory.mktemp("pft-dashboard-runs"))


def api(backend: Backend, path: str, **params: Any) -> Any:
    """One GET of the users' API, as JSON."""
    with backend.client() as c:
        return _ok(c.get(path, params=params)).json()


@pytest.fixture(scope="module")
def own_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A lab of the test module's own: its jobs queue up in no other module's backend."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with running_backend(tmp_path_factory.mktemp(f"pft-{name}")) as b:
        yield b


@pytest.fixture
def own_lab(own_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """The dashboard pointed at `own_backend` for one test, its caches forgotten after."""
    point_dashboard_at(own_backend, monkeypatch)
    yield own_backend
    forget_caches()

"""A real backend for the dashboard's page tests: uvicorn in a subprocess on a free port, a
temporary data folder with SQLite, and the real Redis on database 13 with a queue of its own
(``pft-dashboard-<random>``), so that jobs queued here are never picked up by other tests'
workers; only that queue's keys are deleted afterwards (others share the Redis server).

No worker runs here: where a page needs finished jobs, ``finish_job`` plays the worker's part
through the same `backend.crud` lifecycle calls the real worker makes (claim, epochs, angles,
finish). Training itself is covered by the worker and end-to-end tests.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REDIS_URL = "redis://127.0.0.1:6379/13"
WORKER = "dashboard-test"


@dataclass
class Backend:
    url: str
    token: str
    data_dir: Path
    db_url: str
    queue: str = ""  # the Celery queue its jobs are sent to

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            timeout=10,
            headers={"Authorization": f"Bearer {self.token}"},
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
    queue = f"pft-dashboard-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "PFT_DATA_DIR": str(data_dir),
        "PFT_API_TOKEN": token,
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
            if httpx.get(url + "/api/v1/health", timeout=2).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the backend did not start:\n" + (data_dir / "api.log").read_text()[-3000:])
        time.sleep(0.2)
    try:
        yield Backend(url, token, data_dir, f"sqlite:///{data_dir / 'lab.db'}", queue)
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
    body = {
        "model": "pft/vit-micro",
        "dataset": "synthetic",
        "strategies": strategies,
        "seeds": seeds or [0],
        "hparams": {"epochs": 2},
        **extra,
    }
    with backend.client() as c:
        r = c.post("/experiments", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def unit_angles(scale: float = 1.0) -> dict[str, float]:
    """Distinct per-unit angles for vit-micro (4 blocks): FFN.i > ATTN.i, deeper is larger."""
    return {
        f"{k}.{i}": scale * (10.0 * i + (2.0 if k == "FFN" else 1.0))
        for i in range(4)
        for k in ("ATTN", "FFN")
    }


def tensor_angles(scale: float = 1.0) -> dict[str, float]:
    from pft.model_catalog import unit_map_for

    um = unit_map_for("pft/vit-micro", 4)
    return {t: scale * (u.block + 0.1 * j) for u in um.units for j, t in enumerate(u.tensors)}


def finish_job(
    backend: Backend,
    job_id: int,
    *,
    test_acc: float = 0.8,
    epochs: int = 2,
    status: str = "succeeded",
    angle_scale: float = 1.0,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Plays the worker for one job through `backend.crud` (the worker's own calls)."""
    from backend import crud
    from backend.db.session import session_scope

    with session_scope(backend.db_url) as s:
        assert crud.claim_job(s, job_id=job_id, worker=WORKER) is not None
        for epoch in range(1, epochs + 1):
            frac = epoch / epochs
            crud.record_epoch(
                s,
                job_id=job_id,
                epoch=epoch,
                metrics={
                    "train_loss": 2.0 - frac,
                    "heldout_acc": test_acc * frac - 0.01,
                    "test_acc": test_acc * frac,
                    "images_per_sec": 500.0,
                },
            )
            crud.record_angles(
                s, job_id=job_id, epoch=epoch, angles={"units": unit_angles(angle_scale * frac)}
            )
        if status == "succeeded":
            crud.record_angles(
                s,
                job_id=job_id,
                angles={"units": unit_angles(angle_scale), "tensors": tensor_angles(angle_scale)},
            )
        summary = {"test_acc": test_acc, "heldout_acc": test_acc - 0.01, **(result or {})}
        assert crud.finish_job(
            s,
            job_id=job_id,
            worker=WORKER,
            status=status,
            result=summary if status == "succeeded" else None,
            error=error,
        )


def finish_soup(
    backend: Backend,
    job_id: int,
    *,
    trace: list[dict],
    score_in: float,
    scores_out: Mapping[str, float],
) -> None:
    from backend import crud
    from backend.db.session import session_scope

    with session_scope(backend.db_url) as s:
        assert crud.claim_job(s, job_id=job_id, worker=WORKER) is not None
        crud.record_soup_result(
            s, job_id=job_id, trace=trace, score_in=score_in, scores_out=dict(scores_out)
        )
        assert crud.finish_job(
            s, job_id=job_id, worker=WORKER, status="succeeded", result={"test_acc": score_in}
        )

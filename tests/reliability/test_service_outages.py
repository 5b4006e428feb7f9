"""Redis and the API going away while jobs are queued and running.

The broker here is a private ``redis-server`` without persistence, so stopping it loses every
queued message, the worst case. The database is the source of truth: the reconciler
(`backend.reconciler`, the API's thread) sends the lost jobs again, and the workers' atomic
claims keep any job from running twice. The API is a real uvicorn process, SIGKILLed and started
again on the same port; the dashboard page is run against it with Streamlit's `AppTest`.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from backend import crud
from backend.reconciler import reconcile
from tests.dashboard.conftest import Backend, forget_caches, point_dashboard_at
from tests.dashboard.test_pages import page, page_text
from tests.reliability.conftest import allow_attempts, api_server, own_redis
from tests.worker.conftest import Lab, make_lab, tiny_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HPARAMS = {"epochs": 4, "batch_size": 8}
FINAL = ("succeeded", "failed", "cancelled")


def _claims(lab: Lab, job_id: int) -> int:
    """How many times a worker log says it claimed ``job_id`` (one per run)."""
    return sum(w.log().count(f"job {job_id} (finetune) claimed by") for w in lab.workers)


def test_redis_stopped_with_jobs_queued_and_running_loses_none_and_runs_none_twice(
    tmp_path: Path,
):
    with own_redis(tmp_path / "redis") as broker, make_lab(tmp_path, broker.url) as lab:
        allow_attempts(lab, 1)  # a second claim of any job would fail it
        lab.start_worker("w1")
        lab.start_worker("w2")
        jobs = [lab.create_job(config=tiny_config(hparams=HPARAMS)) for _ in range(5)]
        for job_id in jobs:
            lab.enqueue(job_id)
        running = wait_for(
            lambda: len(r := [j for j in jobs if lab.job(j).status == "running"]) == 2 and r,
            60,
            "both workers to run a job",
        )
        assert lab.queue_length() == 3

        broker.stop()  # every queued message is gone with it
        try:
            time.sleep(3)
            # the running jobs carry on without the broker (they report to the database)
            assert all(lab.job(j).status in ("running", "succeeded") for j in running)
        finally:
            broker.start()
        assert lab.queue_length() == 0
        queued = [j for j in jobs if lab.job(j).status == "queued"]
        assert len(queued) == 3

        def settled() -> bool:
            with lab.session() as s:
                reconcile(s, settings=lab.settings)
            return all(lab.job(j).status in FINAL for j in jobs)

        wait_for(settled, 180, "every job to finish after the outage", poll=1.0)
        for job_id in jobs:
            job = lab.job(job_id)
            assert job.status == "succeeded", (job_id, job.error)
            assert job.attempts == 1 and _claims(lab, job_id) == 1
            with lab.session() as s:
                assert [m.epoch for m in crud.get_metrics(s, job_id=job_id)] == [1, 2, 3, 4]
        assert all(w.alive() for w in lab.workers)


def test_api_killed_and_restarted_while_jobs_run_loses_nothing(lab: Lab, monkeypatch):
    lab.start_worker("w1")
    with api_server(lab, reconcile_interval_s=1) as api:
        dashboard = Backend(api.url, api.token, lab.root / "data", lab.settings.db_url, lab.queue)
        point_dashboard_at(dashboard, monkeypatch)
        body = {
            "model": "pft/vit-micro",
            "dataset": "synthetic",
            "pretrained": False,
            "strategies": [{"name": n} for n in ("full", "attn_only", "ffn_only", "linear_probe")],
            "seeds": [0],
            "hparams": {"epochs": 3, "batch_size": 8},
        }
        with api.client() as c:
            r = c.post("/experiments", json=body)
            assert r.status_code == 201, r.text
        created = r.json()
        experiment_id = created["experiment"]["id"]
        ids = sorted(j["id"] for j in created["jobs"])
        assert len(ids) == 4
        wait_for(lambda: lab.job(ids[0]).status == "running", 60, "the first job to run")

        api.stop()  # SIGKILL: no shutdown hooks
        with pytest.raises(httpx.TransportError):
            httpx.get(api.url + "/api/v1/health", timeout=2)
        at = page("jobs").run(timeout=30)  # the dashboard says the API is down, no traceback
        assert not at.exception and at.error  # a message for the user
        assert "Traceback" not in page_text(at)
        print(f"dashboard while the API is down: {at.error[0].value}")
        time.sleep(2)
        api.start()

        forget_caches()
        at = page("jobs").run(timeout=30)  # and works again once it is back
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert all(str(i) in page_text(at) for i in ids)

        def all_done() -> bool:
            with api.client() as c:
                jobs = c.get("/jobs", params={"experiment_id": experiment_id}).json()["items"]
            return len(jobs) == 4 and all(j["status"] in FINAL for j in jobs)

        wait_for(all_done, 150, "the experiment's jobs to finish", poll=1.0)
        with api.client() as c:
            jobs = c.get("/jobs", params={"experiment_id": experiment_id}).json()["items"]
            assert sorted(j["id"] for j in jobs) == ids
            assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in jobs), jobs
            for job_id in ids:
                epochs = [m["epoch"] for m in c.get(f"/jobs/{job_id}/metrics").json()]
                assert epochs == [1, 2, 3]
    forget_caches()

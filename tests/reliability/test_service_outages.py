"""Redis and the API going away while jobs are queued and running.

The broker here is a private ``redis-server`` without persistence, so stopping it loses every
queued message, the worst case. The database is the source of truth: the API's reconciler sends
the lost jobs again, and the API's atomic claims keep any job from running twice. The API is a
real uvicorn process, SIGKILLed and started again on the same port while workers are mid-job:
they buffer their reports and retry until it answers again. The dashboard page is run against
it with Streamlit's `AppTest`.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from contract.vocab import JobStatus
from tests.dashboard.conftest import Backend, forget_caches, point_dashboard_at
from tests.dashboard.test_pages import page, page_text
from tests.reliability.conftest import own_redis
from tests.worker.conftest import FINAL, Lab, make_lab, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

HPARAMS = {"epochs": 4, "batch_size": 8}


def _claims(lab: Lab, job_id: int) -> int:
    """How many times a worker log says it claimed ``job_id`` (one per run)."""
    return sum(w.log().count(f"job {job_id} (finetune) claimed by") for w in lab.workers)


def test_redis_stopped_with_jobs_queued_and_running_loses_none_and_runs_none_twice(
    tmp_path: Path,
):
    with (
        own_redis(tmp_path / "redis") as broker,
        make_lab(
            tmp_path,
            broker.url,
            max_attempts=1,  # a second claim of any job would fail it
        ) as lab,
    ):
        lab.start_worker("w1")
        lab.start_worker("w2")
        jobs = [lab.create_job(hparams=HPARAMS) for _ in range(5)]
        running = wait_for(
            lambda: (
                len(r := [j for j in jobs if lab.job(j).status == JobStatus.RUNNING]) == 2 and r
            ),
            90,
            "both workers to run a job",
        )
        assert lab.queue_length() == 3

        broker.stop()  # every queued message is gone with it
        try:
            time.sleep(3)
            # the running jobs carry on without the broker (they report to the API)
            assert all(
                lab.job(j).status in (JobStatus.RUNNING, JobStatus.SUCCEEDED) for j in running
            )
        finally:
            broker.start()
        queued = [j for j in jobs if lab.job(j).status == JobStatus.QUEUED]
        assert len(queued) == 3

        # the API's reconciler finds the queued jobs missing from the broker and sends them
        wait_for(
            lambda: all(lab.job(j).status in FINAL for j in jobs),
            240,
            "every job to finish after the outage",
            poll=1.0,
        )
        for job_id in jobs:
            job = lab.job(job_id)
            assert job.status == JobStatus.SUCCEEDED, (job_id, job.error)
            assert job.attempts == 1 and _claims(lab, job_id) == 1
            assert lab.epochs(job_id) == [1, 2, 3, 4]
        assert all(w.alive() for w in lab.workers)


def test_api_killed_and_restarted_while_jobs_run_loses_nothing(lab: Lab, monkeypatch):
    worker = lab.start_worker("w1")
    api = lab.api
    dashboard = Backend(api.url, api.token, lab.data, lab.settings.db_url, lab.queue)
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
    wait_for(lambda: lab.job(ids[0]).progress > 0, 90, "the first job to report progress")

    api.stop()  # SIGKILL: no shutdown hooks; the running job's reports now fail
    with pytest.raises(httpx.TransportError):
        httpx.get(api.url + "/api/v1/health", timeout=2)
    at = page("jobs").run(timeout=30)  # the dashboard says the API is down, no traceback
    assert not at.exception and at.error  # a message for the user
    assert "Traceback" not in page_text(at)
    print(f"dashboard while the API is down: {at.error[0].value}")
    wait_for(lambda: "reports wait for the API" in worker.log(), 30, "the worker to notice")
    api.start()

    forget_caches()
    at = page("jobs").run(timeout=30)  # and works again once it is back
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert all(str(i) in page_text(at) for i in ids)

    def all_done() -> bool:
        with api.client() as c:
            jobs = c.get("/jobs", params={"experiment_id": experiment_id}).json()["items"]
        return len(jobs) == 4 and all(j["status"] in FINAL for j in jobs)

    wait_for(all_done, 240, "the experiment's jobs to finish", poll=1.0)
    for job_id in ids:
        job = lab.job(job_id)
        assert job.status == JobStatus.SUCCEEDED and job.attempts == 1, (job_id, job.error)
        assert lab.epochs(job_id) == [1, 2, 3]
    forget_caches()


def test_a_new_database_runs_its_job_1_afresh_and_keeps_the_old_job_1s_files(lab: Lab):
    """``lab.db`` lost: a new database counts job ids from 1 again. Its job 1 (another
    configuration) must neither resume from nor trip over the old job 1's finished run in the
    store ("holds a finished run with a different configuration"), nor delete it."""
    lab.start_worker("w1")
    old_id = lab.create_job(hparams={"epochs": 1, "batch_size": 8})
    assert lab.wait_status(old_id, FINAL, 120).status == JobStatus.SUCCEEDED
    old = lab.artifacts(old_id)["delta"]
    old_bytes = lab.file(old).read_bytes()

    lab.api.stop()
    for path in lab.data.glob("lab.db*"):  # the database and its -wal / -shm files
        path.unlink()
    lab.api.start()  # a new, empty database
    new_id = lab.create_job(hparams={"epochs": 1, "batch_size": 8, "lr": 3e-3})
    assert new_id == old_id  # the id collides with the old job's folder
    job = lab.wait_status(new_id, FINAL, 120)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1, job.error
    assert job.result["resumed_from_step"] == 0  # a fresh run, nothing reused
    new = lab.artifacts(new_id)["delta"]
    assert new.path != old.path and new.sha256 != old.sha256
    assert lab.file(old).read_bytes() == old_bytes  # the old database's run is left alone

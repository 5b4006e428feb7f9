"""Real `celery worker` processes (prefork, -c 1) running jobs from a real Redis and database.

Only the GPU is missing here (PFT_DEVICE=cpu); the broker, the worker processes, the database
and the training are real. The backend's own enqueue and reconciler code drive the workers.
"""

from __future__ import annotations

import time

import pytest

from backend import crud
from backend.enqueue import broker_job_ids
from backend.reconciler import reconcile
from lab.redis_server import start_redis
from tests.worker.conftest import Lab, make_lab, tiny_config, wait_for
from worker.artifacts import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Long enough to observe and interrupt (~5-15 s on two busy cores), short enough for CI.
LONG = {"epochs": 10, "batch_size": 4}


def test_job_runs_to_success_and_a_duplicate_delivery_does_not_run_it_again(lab: Lab):
    worker = lab.start_worker()
    job_id = lab.create_job(config=tiny_config(hparams={"epochs": 3}, shifts=["blur"]))
    lab.enqueue(job_id)
    lab.enqueue(job_id)  # a duplicate message, as after a broker redelivery or reconciler race

    job = lab.wait_status(job_id, ("succeeded", "failed"), 60)
    assert job.status == "succeeded", job.error
    assert job.attempts == 1
    assert job.progress == 1.0
    assert job.worker.endswith("(cpu)") and job.heartbeat_at is not None
    assert job.progress_info["device"] == "cpu" and job.progress_info["total_steps"] > 0
    assert job.result["test_acc"] == pytest.approx(job.result["epochs"][-1]["test_acc"])
    assert set(job.result["shifts"]) == {"blur"}

    with lab.session() as s:
        metrics = crud.get_metrics(s, job_id=job_id)
        assert [m.epoch for m in metrics] == [1, 2, 3]
        assert all(m.test_acc is not None and m.train_loss > 0 for m in metrics)
        angles = crud.get_angles(s, job_id=job_id)
        final = crud.final_unit_angles(s, job_id=job_id)
        artifacts = {a.kind: a for a in crud.get_artifacts(s, job_id=job_id)}
    assert {a.epoch for a in angles} == {-1, 1, 2, 3}
    assert set(final) == {f"{g}.{i}" for g in ("ATTN", "FFN") for i in range(4)}
    assert all(0 < deg < 90 for deg in final.values())
    assert set(artifacts) == {"delta", "metrics", "angles"}
    for artifact in artifacts.values():
        assert sha256_file(artifact.location) == artifact.sha256

    # The duplicate message reaches the (idle again) worker, which must skip the finished job.
    wait_for(lambda: f"job {job_id} not claimed" in worker.log(), 30, "the duplicate delivery")
    assert lab.queue_length() == 0
    job = lab.job(job_id)
    assert job.attempts == 1 and job.status == "succeeded"
    with lab.session() as s:
        assert [m.epoch for m in crud.get_metrics(s, job_id=job_id)] == [1, 2, 3]


def test_cancel_a_running_job_while_the_next_one_waits_in_redis(lab: Lab):
    lab.start_worker()
    long_job = lab.create_job(config=tiny_config(hparams={**LONG, "epochs": 200}))
    next_job = lab.create_job()
    never = lab.create_job()
    with lab.session() as s:  # cancelled while queued: must never start
        assert crud.request_cancel(s, job_id=never) == "cancelled"
    lab.enqueue(long_job)
    lab.enqueue(never)
    lab.enqueue(next_job)

    wait_for(lambda: lab.job(long_job).progress > 0, 60, "the long job to report progress")
    # Early ack + worker_disable_prefetch: a busy -c 1 worker reserves nothing more, so the
    # other jobs still wait in Redis where any idle worker could take them.
    held = broker_job_ids(settings=lab.settings)
    assert lab.queue_length() == 2, f"queue holds {lab.queue_length()}, broker holds {held}"
    assert held is not None and {never, next_job} <= held
    assert lab.job(long_job).heartbeat_at is not None

    with lab.session() as s:
        outcome = crud.request_cancel(s, job_id=long_job)
    assert outcome == "running", f"cancel answered {outcome}"
    asked = time.monotonic()
    job = lab.wait_status(long_job, ("cancelled", "succeeded", "failed"), 30)
    assert job.status == "cancelled", job.error
    assert time.monotonic() - asked < 10
    assert job.progress < 1.0 and job.error is None
    # The engine saved its state, so a retry resumes instead of starting over.
    assert (lab.root / "data" / "artifacts" / "jobs" / str(long_job) / "state").is_dir()

    assert lab.wait_status(next_job, ("succeeded", "failed"), 60).status == "succeeded"
    cancelled = lab.job(never)
    assert cancelled.status == "cancelled" and cancelled.attempts == 0
    assert cancelled.started_at is None


def test_sigkill_mid_job_then_a_new_worker_resumes_it_with_each_epoch_once(lab: Lab):
    first = lab.start_worker("w1")
    epochs = LONG["epochs"]
    job_id = lab.create_job(config=tiny_config(hparams=LONG))
    lab.enqueue(job_id)
    with lab.session() as s:
        wait_for(lambda: len(crud.get_metrics(s, job_id=job_id)) >= 2, 60, "two epochs to complete")
    first.kill_group()  # SIGKILL to the worker's parent and its pool process at once
    first.proc.wait(10)
    killed_at = time.monotonic()

    job = lab.job(job_id)
    assert job.status == "running" and job.attempts == 1
    with lab.session() as s:
        done_before = len(crud.get_metrics(s, job_id=job_id))
    assert done_before < epochs, "the job finished before the kill; make LONG longer"
    # Early ack: the broker no longer holds the job, the database's heartbeat is what counts.
    held = broker_job_ids(settings=lab.settings)
    assert held is not None and job_id not in held

    second = lab.start_worker("w2")

    def reconciled() -> bool:  # what the API's reconciler thread does periodically
        with lab.session() as s:
            report = reconcile(s, settings=lab.settings)
        return job_id in report.enqueued

    wait_for(reconciled, 30, "the reconciler to re-enqueue the stale job", poll=0.5)
    job = lab.wait_status(job_id, ("succeeded", "failed"), 90)
    assert job.status == "succeeded", job.error
    assert time.monotonic() - killed_at < 120
    assert job.attempts == 2
    assert f"job {job_id} (finetune) claimed by {job.worker}, attempt 2" in second.log()
    # The state is saved before an epoch's rows are written, so it is at least that far.
    assert job.result["resumed_from_epoch"] >= done_before >= 2
    assert f"job {job_id} resumes after epoch" in second.log()
    with lab.session() as s:
        metrics = crud.get_metrics(s, job_id=job_id)
        angle_epochs = {a.epoch for a in crud.get_angles(s, job_id=job_id)}
    assert [m.epoch for m in metrics] == list(range(1, epochs + 1))
    assert [e["epoch"] for e in job.result["epochs"]] == list(range(1, epochs + 1))
    assert angle_epochs == {-1, *range(1, epochs + 1)}


def test_failing_jobs_are_marked_failed_and_the_worker_carries_on(lab: Lab):
    worker = lab.start_worker()
    bad_dataset = lab.create_job(config=tiny_config(dataset="no_such_dataset"))
    corrupt = lab.create_job()
    state = lab.root / "data" / "artifacts" / "jobs" / str(corrupt) / "state"
    state.mkdir(parents=True)
    (state / "tensors-7.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (state / "state.json").write_text('{"tensors": "tensors-7.safetensors", "run": {"epoch": 1}}')
    good = lab.create_job()
    for job_id in (bad_dataset, corrupt, good):
        lab.enqueue(job_id)

    assert lab.wait_status(good, ("succeeded", "failed"), 90).status == "succeeded"
    failed = lab.wait_status(bad_dataset, ("failed",), 10)
    assert "no_such_dataset" in failed.error and "accepted" in failed.error
    failed = lab.wait_status(corrupt, ("failed",), 10)
    assert failed.error.startswith("corrupt checkpoint") and "retry the job" in failed.error
    assert "Traceback" not in failed.error
    assert worker.alive()

    # Retrying the corrupt job starts from scratch (its state was moved aside) and succeeds.
    with lab.session() as s:
        crud.reset_for_retry(s, job_id=corrupt)
    lab.enqueue(corrupt)
    assert lab.wait_status(corrupt, ("succeeded", "failed"), 60).status == "succeeded"


def test_a_job_through_the_embedded_broker_the_launcher_starts(tmp_path):
    with start_redis(tmp_path / "broker") as server, make_lab(tmp_path, server.url) as lab:
        assert server.port != 6379 and lab.settings.broker_url == server.url
        lab.start_worker()
        job_id = lab.create_job()
        lab.enqueue(job_id)
        job = lab.wait_status(job_id, ("succeeded", "failed"), 60)
        assert job.status == "succeeded", job.error
        with lab.session() as s:
            assert [m.epoch for m in crud.get_metrics(s, job_id=job_id)] == [1, 2]
        lab.stop_workers()
    assert not server.ping()

"""Real `celery worker` processes (prefork, -c 1) running jobs from a real Redis, reporting to a
real API process over HTTP.

Only the GPU is missing here (PFT_DEVICE=cpu); the broker, the API (with its reconciler thread),
the worker processes and the training are real. Workers hold no database URL.
"""

from __future__ import annotations

import pytest

from backend.enqueue import broker_job_ids
from contract.vocab import JobKind, JobStatus
from lab.redis_server import start_redis
from pft.store import sha256_file
from tests.worker.conftest import FINAL, Lab, make_lab, tiny_spec, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# Long enough to observe and interrupt (~5-15 s on two busy cores), short enough for CI.
LONG = {"epochs": 10, "batch_size": 4}


def test_job_runs_to_success_and_a_duplicate_delivery_does_not_run_it_again(lab: Lab):
    worker = lab.start_worker()
    job_id = lab.create_job(hparams={"epochs": 3}, shifts=["blur"])
    lab.enqueue(job_id)  # a duplicate message, as after a broker redelivery or reconciler race

    job = lab.wait_status(job_id, FINAL, 90)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 1
    assert job.progress == 1.0
    assert job.worker.endswith("(cpu)") and job.heartbeat_at is not None
    assert job.progress_info["device"] == "cpu" and job.progress_info["total_steps"] > 0
    assert job.result["test_acc"] == pytest.approx(job.result["epochs"][-1]["test_acc"])
    assert set(job.result["shifts"]) == {"blur"}

    metrics = lab.metrics(job_id)
    assert [m.epoch for m in metrics] == [1, 2, 3]
    assert all(m.test_acc is not None and m.train_loss > 0 for m in metrics)
    angles = lab.angles(job_id)
    assert [e.epoch for e in angles.epochs] == [1, 2, 3]
    final = {r.name: r.angle_deg for r in angles.final.units}
    assert set(final) == {f"{g}.{i}" for g in ("ATTN", "FFN") for i in range(4)}
    assert all(0 < deg < 90 for deg in final.values())
    artifacts = lab.artifacts(job_id)
    assert set(artifacts) == {"delta", "metrics", "angles"}
    for artifact in artifacts.values():
        assert sha256_file(lab.file(artifact)) == artifact.sha256

    # The duplicate message reaches the (idle again) worker, which must skip the finished job.
    wait_for(lambda: f"job {job_id} not claimed" in worker.log(), 30, "the duplicate delivery")
    assert lab.queue_length() == 0
    job = lab.job(job_id)
    assert job.attempts == 1 and job.status == JobStatus.SUCCEEDED
    assert lab.epochs(job_id) == [1, 2, 3]
    assert "torch threads" in worker.log()


def test_cancel_a_running_job_while_the_next_one_waits_in_redis(lab: Lab):
    lab.start_worker()
    long_job = lab.create_job(hparams={**LONG, "epochs": 200})
    wait_for(lambda: lab.job(long_job).progress > 0, 90, "the long job to report progress")
    never = lab.create_job()
    assert lab.post(f"/jobs/{never}/cancel").status == JobStatus.CANCELLED  # while queued
    next_job = lab.create_job()

    # Early ack + worker_disable_prefetch: a busy -c 1 worker reserves nothing more, so the
    # other jobs still wait in Redis where any idle worker could take them.
    wait_for(lambda: lab.queue_length() == 2, 30, "both jobs to wait in Redis")
    held = broker_job_ids(settings=lab.settings)
    assert held is not None and {never, next_job} <= held
    assert lab.job(long_job).heartbeat_at is not None

    assert lab.post(f"/jobs/{long_job}/cancel").cancel_requested
    job = lab.wait_status(long_job, FINAL, 30)
    assert job.status == JobStatus.CANCELLED, job.error
    assert job.progress < 1.0 and job.error is None
    # The engine saved its state, so a retry resumes instead of starting over.
    assert (lab.run_dir(long_job) / "state").is_dir()

    assert lab.wait_status(next_job, FINAL, 90).status == JobStatus.SUCCEEDED
    cancelled = lab.job(never)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.attempts == 0
    assert cancelled.started_at is None


def test_sigkill_mid_job_then_a_new_worker_resumes_it_with_each_epoch_once(lab: Lab):
    first = lab.start_worker("w1")
    epochs = LONG["epochs"]
    job_id = lab.create_job(hparams=LONG)
    wait_for(lambda: len(lab.epochs(job_id)) >= 2, 90, "two epochs to complete")
    first.kill_group()  # SIGKILL to the worker's parent and its pool process at once
    first.proc.wait(10)

    job = lab.job(job_id)
    assert job.status == JobStatus.RUNNING and job.attempts == 1
    done_before = len(lab.epochs(job_id))
    assert done_before < epochs, "the job finished before the kill; make LONG longer"
    # Early ack: the broker no longer holds the job, the API's heartbeat is what counts.
    held = broker_job_ids(settings=lab.settings)
    assert held is not None and job_id not in held

    # The API's reconciler finds the heartbeat stale and sends the job again.
    second = lab.start_worker("w2")
    job = lab.wait_status(job_id, FINAL, 120)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    assert f"job {job_id} (finetune) claimed by {job.worker}, attempt 2" in second.log()
    # The state is saved before an epoch's report is sent, so it is at least that far.
    assert job.result["resumed_from_epoch"] >= done_before >= 2
    assert lab.epochs(job_id) == list(range(1, epochs + 1))
    assert [e["epoch"] for e in job.result["epochs"]] == list(range(1, epochs + 1))
    assert [e.epoch for e in lab.angles(job_id).epochs] == list(range(1, epochs + 1))


def test_failing_jobs_are_marked_failed_and_the_worker_carries_on(lab: Lab):
    # The API refuses an unknown dataset; a job that names one anyway fails in the worker too.
    bad_dataset = lab.insert_job(JobKind.FINETUNE, tiny_spec(dataset="no_such_dataset"))
    corrupt = lab.create_job()
    state = lab.data / "artifacts" / "jobs" / str(corrupt) / "state"
    state.mkdir(parents=True)
    (state / "tensors-7.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (state / "state.json").write_text('{"tensors": "tensors-7.safetensors", "run": {"epoch": 1}}')
    bad_spec = lab.insert_job(JobKind.FINETUNE, {**tiny_spec(), "no_such_field": 1})
    good = lab.create_job()
    lab.enqueue(bad_dataset)
    lab.enqueue(bad_spec)
    worker = lab.start_worker()

    assert lab.wait_status(good, FINAL, 120).status == JobStatus.SUCCEEDED
    failed = lab.wait_status(bad_dataset, (JobStatus.FAILED,), 30)
    assert "no_such_dataset" in failed.error and "accepted" in failed.error
    failed = lab.wait_status(bad_spec, (JobStatus.FAILED,), 30)
    assert "no_such_field" in failed.error, failed.error
    failed = lab.wait_status(corrupt, (JobStatus.FAILED,), 30)
    assert failed.error.startswith("corrupt checkpoint") and "retry the job" in failed.error
    assert "Traceback" not in failed.error
    assert worker.alive()

    # Retrying the corrupt job starts from scratch (its state was moved aside) and succeeds.
    assert lab.post(f"/jobs/{corrupt}/retry").status == JobStatus.QUEUED
    assert lab.wait_status(corrupt, FINAL, 90).status == JobStatus.SUCCEEDED


def test_a_job_through_the_embedded_broker_the_launcher_starts(tmp_path):
    with start_redis(tmp_path / "broker") as server, make_lab(tmp_path, server.url) as lab:
        assert server.port != 6379 and lab.settings.broker_url == server.url
        lab.start_worker()
        job_id = lab.create_job()
        job = lab.wait_status(job_id, FINAL, 90)
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert lab.epochs(job_id) == [1, 2]
        lab.stop_workers()
    assert not server.ping()

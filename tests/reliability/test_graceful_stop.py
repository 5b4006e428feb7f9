"""No lost work: a worker told to stop saves the job mid-epoch, and a timer bounds a kill -9.

Real ``celery worker`` processes (prefork, -c 1). SIGTERM goes to the worker's whole process
group, as Ctrl-C of ``pft up`` (the launcher's ``stop_group``) sends it: the pool process saves the
job's state at its next step poll and gives the job back to the queue; the next worker resumes at
that step. With ``PFT_CHECKPOINT_EVERY_S`` set, a worker SIGKILLed mid-epoch loses only the steps
since its last timed checkpoint. Every resumed job ends bit-identical to an uninterrupted run:
per-epoch losses and accuracies equal (not close), delta files byte-identical. Only the GPU is
missing (PFT_DEVICE=cpu).
"""

from __future__ import annotations

import hashlib
import json
import signal

import pytest

from contract.vocab import JobStatus
from tests.worker.conftest import FINAL, Lab, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

EPOCHS = 4
HPARAMS = {"epochs": EPOCHS, "batch_size": 4, "seed": 11}
TIMER = {"PFT_CHECKPOINT_EVERY_S": "0.3"}
METRICS = ("train_loss", "heldout_acc", "test_acc", "heldout_loss", "test_loss")


def _state(lab: Lab, job_id: int) -> dict | None:
    """The run state the job's folder in the store holds now (None before the first save)."""
    path = lab.run_dir(job_id) / "state" / "state.json"
    try:
        return json.loads(path.read_text())["run"]
    except (OSError, ValueError, KeyError):
        return None


def _mid_epoch_state(lab: Lab, job_id: int) -> dict | None:
    st = _state(lab, job_id)
    return st if st and st["epoch"] >= 1 and st["step_in_epoch"] > 0 else None


def _same_as(lab: Lab, job_id: int, reference: int) -> None:
    job, ref = lab.job(job_id), lab.job(reference)
    assert job.status == JobStatus.SUCCEEDED, job.error
    rows, ref_rows = lab.metrics(job_id), lab.metrics(reference)
    assert [m.epoch for m in rows] == list(range(1, EPOCHS + 1))  # each epoch exactly once
    got = [[getattr(m, k) for k in METRICS] for m in rows]
    assert got == [[getattr(m, k) for k in METRICS] for m in ref_rows]
    refs = [lab.artifacts(j)["delta"] for j in (job_id, reference)]
    data = [lab.file(r).read_bytes() for r in refs]
    assert data[0] == data[1]
    assert refs[0].sha256 == refs[1].sha256 == hashlib.sha256(data[0]).hexdigest()
    assert job.result["test_acc"] == ref.result["test_acc"]


def test_sigterm_saves_mid_epoch_and_a_timer_bounds_a_kill(lab: Lab):
    worker = lab.start_worker("ref", env=TIMER)
    reference = lab.create_job(hparams=HPARAMS)
    ref = lab.wait_status(reference, FINAL, 180)
    assert ref.status == JobStatus.SUCCEEDED, ref.error
    assert ref.result["resumed_from_step"] == 0

    # 1. SIGTERM to the whole group, part-way into epoch 2
    stopped = lab.create_job(hparams=HPARAMS)
    wait_for(lambda: _mid_epoch_state(lab, stopped), 90, "a checkpoint in epoch 2", 0.02)
    worker.kill_group(signal.SIGTERM)
    assert worker.proc.wait(60) == 0, worker.log()[-3000:]  # a clean warm shutdown
    job = lab.job(stopped)
    assert job.status == JobStatus.QUEUED and job.attempts == 0, (job.status, job.attempts)
    assert job.worker is None
    saved = _state(lab, stopped)
    assert saved is not None and saved["step_in_epoch"] > 0  # saved mid-epoch, not at its end
    assert "given back to the queue: worker stopped (SIGTERM)" in worker.log()

    # the next worker claims it (the release enqueued it) and resumes at the saved step
    worker = lab.start_worker("next", env=TIMER)
    job = lab.wait_status(stopped, FINAL, 180)
    assert job.attempts == 1  # the stop did not use up an attempt
    assert job.result["resumed_from_step"] == saved["global_step"]
    _same_as(lab, stopped, reference)

    # 2. SIGKILL right after a timed mid-epoch checkpoint: at most the steps since it are lost
    killed = lab.create_job(hparams=HPARAMS)
    seen = wait_for(lambda: _mid_epoch_state(lab, killed), 90, "a timed checkpoint", 0.02)
    worker.kill_group(signal.SIGKILL)
    worker.proc.wait(10)
    lab.start_worker("last", env=TIMER)  # claims it once the heartbeat is stale
    job = lab.wait_status(killed, FINAL, 180)
    assert job.attempts == 2
    assert job.result["resumed_from_step"] >= seen["global_step"]
    _same_as(lab, killed, reference)
    print(
        f"SIGTERM saved at step {saved['global_step']} (epoch {saved['epoch'] + 1}, step "
        f"{saved['step_in_epoch']}); kill -9 resumed from step {job.result['resumed_from_step']} "
        f"(a checkpoint at step {seen['global_step']} was seen before the kill)"
    )

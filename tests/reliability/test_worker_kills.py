"""A worker SIGKILLed mid-epoch, five times in a row on the same job.

Real ``celery worker`` processes (prefork, -c 1), each killed as a whole process group (parent
and pool child at once, as the OOM killer or a power cut would). Between kills the API's
reconciler finds the job's heartbeat stale and puts it back on the queue, and a fresh worker
claims it and resumes from its last epoch checkpoint. Only the GPU is missing (PFT_DEVICE=cpu).
"""

from __future__ import annotations

import hashlib
import time

import pytest
import torch

from contract.vocab import JobStatus
from pft.checkpoint import load_delta
from tests.worker.conftest import FINAL, Lab, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

KILLS = 5
EPOCHS = 9
HPARAMS = {"epochs": EPOCHS, "batch_size": 4, "seed": 7}


def test_five_sigkills_mid_epoch_and_the_job_ends_like_an_uninterrupted_run(lab: Lab):
    # The uninterrupted run: same config and seed, same kind of worker process.
    worker = lab.start_worker("ref")
    started = time.monotonic()
    reference = lab.create_job(hparams=HPARAMS)
    ref = lab.wait_status(reference, FINAL, 180)
    assert ref.status == JobStatus.SUCCEEDED, ref.error
    epoch_s = (time.monotonic() - started) / EPOCHS
    worker.kill_group()
    worker.proc.wait(10)

    job_id = lab.create_job(hparams=HPARAMS)
    kills: list[tuple[int, float]] = []  # (epochs done, progress) at each kill
    for n in range(KILLS):
        worker = lab.start_worker(f"k{n}")
        # the reconciler re-queues the stale job, and this worker claims it
        wait_for(lambda n=n: lab.job(job_id).attempts == n + 1, 90, f"k{n} to claim the job")
        before = len(lab.epochs(job_id))
        # one more epoch completes under this worker, then it dies part-way into the next
        wait_for(lambda b=before: len(lab.epochs(job_id)) > b, 90, f"an epoch under k{n}", 0.05)
        time.sleep(0.4 * epoch_s)
        done = len(lab.epochs(job_id))
        assert done < EPOCHS, f"the job finished before kill {n + 1}; raise EPOCHS"
        worker.kill_group()
        worker.proc.wait(10)
        kills.append((done, lab.job(job_id).progress))
        assert lab.job(job_id).status in (JobStatus.RUNNING, JobStatus.QUEUED)

    lab.start_worker("last")
    job = lab.wait_status(job_id, FINAL, 180)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == KILLS + 1
    assert [d for d, _ in kills] == sorted(d for d, _ in kills)  # progress was never lost
    assert job.result["resumed_from_epoch"] >= kills[-1][0]

    rows, ref_rows = lab.metrics(job_id), lab.metrics(reference)
    # each epoch's metrics exactly once, in order
    assert [m.epoch for m in rows] == list(range(1, EPOCHS + 1))
    assert [e.epoch for e in lab.angles(job_id).epochs] == list(range(1, EPOCHS + 1))
    # and the same numbers as the uninterrupted run: resuming is exact, not approximate
    assert [m.test_acc for m in rows] == [m.test_acc for m in ref_rows]
    assert [m.heldout_acc for m in rows] == [m.heldout_acc for m in ref_rows]
    assert [m.train_loss for m in rows] == pytest.approx([m.train_loss for m in ref_rows], rel=1e-6)
    assert job.result["test_acc"] == ref.result["test_acc"]
    # bit-identical fine-tuned weights, in byte-identical files (the recorded sha256 agree)
    refs = [lab.artifacts(j)["delta"] for j in (job_id, reference)]
    deltas = [lab.file(r) for r in refs]
    (resumed, resumed_meta), (whole, whole_meta) = (load_delta(p) for p in deltas)
    assert resumed.keys() == whole.keys() and resumed_meta == whole_meta
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert deltas[0].read_bytes() == deltas[1].read_bytes()
    assert refs[0].sha256 == refs[1].sha256 == hashlib.sha256(deltas[0].read_bytes()).hexdigest()
    print(f"kills at (epochs done, progress): {kills}; final test_acc {job.result['test_acc']}")

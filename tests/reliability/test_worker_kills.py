"""A worker SIGKILLed mid-epoch, five times in a row on the same job.

Real ``celery worker`` processes (prefork, -c 1), each killed as a whole process group (parent
and pool child at once, as the OOM killer or a power cut would). Between kills the backend's
reconciler (`backend.reconciler.reconcile`, what the API's thread runs) puts the stale job back
on the queue and a fresh worker resumes it from its last epoch checkpoint. Only the GPU is
missing (PFT_DEVICE=cpu).
"""

from __future__ import annotations

import time

import pytest
import torch

from backend import crud
from backend.reconciler import reconcile
from pft.checkpoint import load_delta
from tests.worker.conftest import Lab, tiny_config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KILLS = 5
EPOCHS = 9
HPARAMS = {"epochs": EPOCHS, "batch_size": 4, "seed": 7}


def _epochs_done(lab: Lab, job_id: int) -> int:
    with lab.session() as s:
        return len(crud.get_metrics(s, job_id=job_id))


def _reconcile_until_enqueued(lab: Lab, job_id: int) -> None:
    def enqueued() -> bool:
        with lab.session() as s:
            return job_id in reconcile(s, settings=lab.settings).enqueued

    wait_for(enqueued, 30, f"the reconciler to re-enqueue job {job_id}", poll=0.3)


def test_five_sigkills_mid_epoch_and_the_job_ends_like_an_uninterrupted_run(lab: Lab):
    # The uninterrupted run: same config and seed, same kind of worker process.
    worker = lab.start_worker("ref")
    reference = lab.create_job(config=tiny_config(hparams=HPARAMS))
    started = time.monotonic()
    lab.enqueue(reference)
    ref = lab.wait_status(reference, ("succeeded", "failed"), 120)
    assert ref.status == "succeeded", ref.error
    epoch_s = (time.monotonic() - started) / EPOCHS
    worker.kill_group()
    worker.proc.wait(10)

    job_id = lab.create_job(config=tiny_config(hparams=HPARAMS))
    lab.enqueue(job_id)
    kills: list[tuple[int, float]] = []  # (epochs done, progress) at each kill
    for n in range(KILLS):
        worker = lab.start_worker(f"k{n}")
        if n > 0:
            _reconcile_until_enqueued(lab, job_id)
        before = _epochs_done(lab, job_id)
        # one more epoch completes under this worker, then it dies part-way into the next
        wait_for(lambda b=before: _epochs_done(lab, job_id) > b, 90, f"an epoch under k{n}", 0.05)
        time.sleep(0.4 * epoch_s)
        done = _epochs_done(lab, job_id)
        assert done < EPOCHS, f"the job finished before kill {n + 1}; raise EPOCHS"
        worker.kill_group()
        worker.proc.wait(10)
        kills.append((done, lab.job(job_id).progress))
        assert lab.job(job_id).status == "running"

    lab.start_worker("last")
    _reconcile_until_enqueued(lab, job_id)
    job = lab.wait_status(job_id, ("succeeded", "failed"), 120)
    assert job.status == "succeeded", job.error
    assert job.attempts == KILLS + 1
    assert [d for d, _ in kills] == sorted(d for d, _ in kills)  # progress was never lost
    assert job.result["resumed_from_epoch"] == kills[-1][0]

    with lab.session() as s:
        rows = crud.get_metrics(s, job_id=job_id)
        ref_rows = crud.get_metrics(s, job_id=reference)
        angle_epochs = sorted({a.epoch for a in crud.get_angles(s, job_id=job_id)})
        deltas = [
            {a.kind: a.location for a in crud.get_artifacts(s, job_id=j)}["delta"]
            for j in (job_id, reference)
        ]
    # each epoch's metrics exactly once, in order
    assert [m.epoch for m in rows] == list(range(1, EPOCHS + 1))
    assert angle_epochs == [-1, *range(1, EPOCHS + 1)]
    # and the same numbers as the uninterrupted run: resuming is exact, not approximate
    assert [m.test_acc for m in rows] == [m.test_acc for m in ref_rows]
    assert [m.heldout_acc for m in rows] == [m.heldout_acc for m in ref_rows]
    assert [m.train_loss for m in rows] == pytest.approx([m.train_loss for m in ref_rows], rel=1e-6)
    assert job.result["test_acc"] == ref.result["test_acc"]
    # bit-identical fine-tuned weights (the files' bytes may differ in header key order)
    (resumed, resumed_meta), (whole, whole_meta) = (load_delta(p) for p in deltas)
    assert resumed.keys() == whole.keys() and resumed_meta == whole_meta
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    print(f"kills at (epochs done, progress): {kills}; final test_acc {job.result['test_acc']}")

"""The persistence helpers the worker and reconciler rely on, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import crud
from backend.db.models import FINAL_EPOCH, Angle, Job, Metric
from backend.db.session import get_engine, make_sessionmaker
from tests.utils.factories import finished_finetune, queued_finetune


def test_claim_is_atomic_under_concurrency(session: Session, empty_db: str) -> None:
    job = queued_finetune(session)
    sessions = make_sessionmaker(get_engine(empty_db))
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def claim(name: str) -> None:
        with sessions() as s:
            barrier.wait()
            if crud.claim_job(s, job_id=job.id, worker=name) is not None:
                winners.append(name)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(winners) == 1
    session.refresh(job)
    assert (job.status, job.worker, job.attempts) == ("running", winners[0], 1)


def test_claim_refuses_finished_and_cancelled_jobs(session: Session) -> None:
    done = finished_finetune(session)
    assert crud.claim_job(session, job_id=done.id, worker="w") is None
    queued = queued_finetune(session)
    assert crud.request_cancel(session, job_id=queued.id) == "cancelled"
    assert crud.claim_job(session, job_id=queued.id, worker="w") is None
    assert crud.claim_job(session, job_id=10**6, worker="w") is None


def test_claim_takes_over_a_stale_running_job_only_when_asked(session: Session) -> None:
    job = queued_finetune(session)
    assert crud.claim_job(session, job_id=job.id, worker="dead") is not None
    assert crud.claim_job(session, job_id=job.id, worker="new", stale_after_s=60) is None
    time.sleep(0.05)
    taken = crud.claim_job(session, job_id=job.id, worker="new", stale_after_s=0.01)
    assert taken is not None and taken.worker == "new" and taken.attempts == 2
    # The old worker has lost the job: its heartbeat and finish are refused.
    assert not crud.heartbeat(session, job_id=job.id, worker="dead", progress=0.5)
    assert not crud.finish_job(session, job_id=job.id, worker="dead", status="succeeded")
    assert crud.heartbeat(session, job_id=job.id, worker="new", progress=0.5, info={"epoch": 1})
    session.refresh(job)
    assert job.progress == 0.5 and job.progress_info == {"epoch": 1}


def test_record_epoch_overwrites_a_redelivered_epoch(session: Session) -> None:
    job = queued_finetune(session)
    crud.record_epoch(session, job_id=job.id, epoch=1, metrics={"test_acc": 0.5, "lr": 0.1})
    crud.record_epoch(session, job_id=job.id, epoch=1, metrics={"test_acc": 0.7, "train_loss": 2})
    crud.record_epoch(session, job_id=job.id, epoch=2, metrics={"test_acc": 0.9})
    rows = crud.get_metrics(session, job_id=job.id)
    assert [(m.epoch, m.test_acc) for m in rows] == [(1, 0.7), (2, 0.9)]
    assert rows[0].train_loss == 2.0 and rows[0].extra == {}
    count = session.scalar(select(func.count(Metric.id)).where(Metric.job_id == job.id))
    assert count == 2
    assert crud.final_metrics(session, job_ids=[job.id])[job.id].epoch == 2


def test_record_angles_accepts_both_formats_and_replaces(session: Session) -> None:
    job = queued_finetune(session)
    crud.record_angles(session, job_id=job.id, epoch=1, angles={"units": {"ATTN.0": 1.0}})
    crud.record_angles(
        session, job_id=job.id, epoch=1, angles={"units": {"ATTN.0": 2.0}, "tensors": {"t": 3.0}}
    )
    report = {
        "units": [{"name": "ATTN.0", "angle_deg": 4.0, "rel_change": 0.1}],
        "tensors": [{"name": "blocks.0.attn.qkv.weight", "angle_deg": 5.0}],
    }
    assert crud.record_angles(session, job_id=job.id, angles=report) == 2
    rows = {(a.epoch, a.scope, a.name): a for a in crud.get_angles(session, job_id=job.id)}
    assert len(rows) == 4
    assert rows[(1, "unit", "ATTN.0")].angle_deg == 2.0
    assert rows[(FINAL_EPOCH, "unit", "ATTN.0")].rel_change == 0.1
    assert crud.final_unit_angles(session, job_id=job.id) == {"ATTN.0": 4.0}
    total = session.scalar(select(func.count(Angle.id)).where(Angle.job_id == job.id))
    assert total == 4


def test_artifact_and_shape_table_upserts(session: Session) -> None:
    job = queued_finetune(session)
    for size in (10, 20):
        crud.record_artifact(
            session, job_id=job.id, kind="delta", location="a/b", size_bytes=size, sha256="0" * 64
        )
    [artifact] = crud.get_artifacts(session, job_id=job.id)
    assert artifact.size_bytes == 20
    crud.store_shape_table(session, key="k", model="m", table={"body": [], "head": []})
    crud.store_shape_table(session, key="k", model="m", table={"body": [["x", [1]]], "head": []})
    assert crud.get_shape_table(session, key="k") == {"body": [["x", [1]]], "head": []}


def test_cancel_and_retry_transitions(session: Session) -> None:
    job = queued_finetune(session)
    crud.claim_job(session, job_id=job.id, worker="w")
    assert crud.request_cancel(session, job_id=job.id) == "running"
    assert crud.is_cancel_requested(session, job_id=job.id)
    assert crud.finish_job(session, job_id=job.id, worker="w", status="cancelled")
    with pytest.raises(crud.JobStateError, match="only queued or running"):
        crud.request_cancel(session, job_id=job.id)
    retried = crud.reset_for_retry(session, job_id=job.id)
    assert (retried.status, retried.attempts, retried.cancel_requested) == ("queued", 0, False)
    with pytest.raises(crud.JobStateError, match="only failed or cancelled"):
        crud.reset_for_retry(session, job_id=job.id)
    with pytest.raises(LookupError):
        crud.request_cancel(session, job_id=10**6)


def test_finish_rejects_non_terminal_status(session: Session) -> None:
    job = queued_finetune(session)
    with pytest.raises(ValueError, match="status must be one of"):
        crud.finish_job(session, job_id=job.id, worker="w", status="running")


def test_release_stale_jobs(session: Session) -> None:
    fresh, stale, exhausted, cancelling = (queued_finetune(session) for _ in range(4))
    for job in (fresh, stale, exhausted, cancelling):
        crud.claim_job(session, job_id=job.id, worker="w")
    session.query(Job).filter(Job.id == exhausted.id).update({"attempts": 3})
    session.commit()
    crud.request_cancel(session, job_id=cancelling.id)
    time.sleep(1.0)
    crud.heartbeat(session, job_id=fresh.id, worker="w")
    requeued, failed, cancelled = crud.release_stale_jobs(
        session, stale_after_s=0.8, max_attempts=3
    )
    assert (requeued, failed, cancelled) == ([stale.id], [exhausted.id], [cancelling.id])
    for job in (fresh, stale, exhausted):
        session.refresh(job)
    assert fresh.status == "running"
    assert stale.status == "queued" and stale.worker is None
    assert exhausted.status == "failed" and "3 attempts" in exhausted.error


def test_extra_metrics_are_stored_json_safe(session: Session) -> None:
    import numpy as np

    job = queued_finetune(session)
    metrics = {"epoch": 1, "test_acc": np.float32(0.5), "lr": np.float64(1e-3), "per_class": [1, 2]}
    crud.record_epoch(session, job_id=job.id, epoch=1, metrics=metrics)
    [row] = crud.get_metrics(session, job_id=job.id)
    assert row.test_acc == 0.5 and row.extra == {"lr": 1e-3, "per_class": [1, 2]}

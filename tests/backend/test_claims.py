"""A worker's writes through `backend.claims`: one claim per attempt, every write guarded by
it, epochs and finish idempotent, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import claims, crud
from backend.db.models import Angle, Metric
from backend.db.session import get_engine, make_sessionmaker
from contract.api import ArtifactReport, EpochRecord, FinishReport, SoupOutcome
from contract.vocab import FINAL_EPOCH, JobStatus
from tests.utils.factories import (
    claimed,
    epoch_record,
    finished_finetune,
    queued_finetune,
    tensor_row,
    unit_angles,
    unit_rows,
)


def test_claim_is_atomic_under_concurrency(session: Session, empty_db: str) -> None:
    job = queued_finetune(session)
    sessions = make_sessionmaker(get_engine(empty_db))
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def claim(name: str) -> None:
        with sessions() as s:
            barrier.wait()
            if claims.claim_job(s, job_id=job.id, worker=name, stale_after_s=60) is not None:
                winners.append(name)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(winners) == 1
    session.refresh(job)
    assert (job.status, job.worker, job.attempts) == ("running", winners[0], 1)
    assert job.claim is not None and len(job.claim) == 32


def test_claim_refuses_finished_and_cancelled_jobs(session: Session) -> None:
    done = finished_finetune(session)
    assert claims.claim_job(session, job_id=done.id, worker="w", stale_after_s=0) is None
    queued = queued_finetune(session)
    assert crud.request_cancel(session, job_id=queued.id) == JobStatus.CANCELLED
    assert claims.claim_job(session, job_id=queued.id, worker="w", stale_after_s=0) is None
    assert claims.claim_job(session, job_id=10**6, worker="w", stale_after_s=0) is None
    assert claims.lost_reason(session, job_id=10**6) is None


def test_a_stale_claim_is_replaced_and_refused(session: Session) -> None:
    job = queued_finetune(session)
    old = claimed(session, job, "dead")
    assert claims.claim_job(session, job_id=job.id, worker="new", stale_after_s=60) is None
    time.sleep(0.05)
    taken = claims.claim_job(session, job_id=job.id, worker="new", stale_after_s=0.01)
    assert taken is not None and taken.worker == "new" and taken.attempts == 2
    assert taken.claim != old
    # The old claim has lost the job: its heartbeat, epochs and finish change nothing.
    assert claims.heartbeat(session, job_id=job.id, claim=old, progress=0.5) is None
    assert not claims.record_epoch(session, job_id=job.id, claim=old, record=epoch_record(1, 0.5))
    assert not claims.finish_job(
        session, job_id=job.id, claim=old, report=FinishReport(claim=old, status="succeeded")
    )
    assert claims.lost_reason(session, job_id=job.id, claim=old) == "another worker claimed it"
    assert crud.get_metrics(session, job_id=job.id) == []
    assert (
        claims.heartbeat(session, job_id=job.id, claim=taken.claim, progress=0.5, info={"epoch": 1})
        is False
    )
    session.refresh(job)
    assert (job.status, job.progress, job.progress_info) == ("running", 0.5, {"epoch": 1})


def test_epoch_reports_are_idempotent_and_replace_their_rows(session: Session) -> None:
    job = queued_finetune(session)
    claim = claimed(session, job)
    first = EpochRecord(
        epoch=1,
        metrics={"test_acc": 0.5, "lr": 0.1},
        angles=[*unit_rows({"ATTN.0": 1.0}), tensor_row("t", 3.0, "ATTN.0")],
    )
    again = EpochRecord(
        epoch=1, metrics={"test_acc": 0.7, "train_loss": 2}, angles=unit_rows({"ATTN.0": 2.0})
    )
    for record in (first, first, again):
        assert claims.record_epoch(session, job_id=job.id, claim=claim, record=record)
    assert claims.record_epoch(
        session, job_id=job.id, claim=claim, record=EpochRecord(epoch=2, metrics={"test_acc": 0.9})
    )
    rows = crud.get_metrics(session, job_id=job.id)
    assert [(m.epoch, m.test_acc) for m in rows] == [(1, 0.7), (2, 0.9)]
    assert rows[0].train_loss == 2.0 and rows[0].extra == {}
    assert session.scalar(select(func.count(Metric.id)).where(Metric.job_id == job.id)) == 2
    [angle] = crud.get_angles(session, job_id=job.id)
    assert (angle.epoch, angle.name, angle.angle_deg, angle.group, angle.block) == (
        1,
        "ATTN.0",
        2.0,
        "ATTN",
        0,
    )


def test_finish_writes_everything_at_once_and_is_idempotent(session: Session) -> None:
    job = queued_finetune(session)
    claim = claimed(session, job)
    artifact = ArtifactReport(
        kind="delta", location=f"jobs/{job.id}/d", size_bytes=9, sha256="a" * 64
    )
    report = FinishReport(
        claim=claim,
        status=JobStatus.SUCCEEDED,
        result={"test_acc": 0.8},
        epochs=[epoch_record(1, 0.4), epoch_record(2, 0.8)],
        angles=[*unit_rows(unit_angles()), tensor_row("blocks.0.attn.qkv.weight", 5.0, "ATTN.0")],
        artifacts=[artifact],
    )
    assert claims.finish_job(session, job_id=job.id, claim=claim, report=report)
    session.refresh(job)
    assert (job.status, job.progress, job.result) == ("succeeded", 1.0, {"test_acc": 0.8})
    finished_at = job.finished_at
    assert [m.epoch for m in crud.get_metrics(session, job_id=job.id)] == [1, 2]
    final = [a for a in crud.get_angles(session, job_id=job.id) if a.epoch == FINAL_EPOCH]
    assert len(final) == len(unit_angles()) + 1
    tensor = next(a for a in final if a.scope == "tensor")
    assert (tensor.unit, tensor.part) == ("ATTN.0", "qkv")
    [stored] = crud.get_artifacts(session, job_id=job.id)
    assert (stored.kind, stored.size_bytes) == ("delta", 9)
    # The same finish again (the answer was lost): accepted, nothing changes.
    assert claims.finish_job(session, job_id=job.id, claim=claim, report=report)
    session.refresh(job)
    assert job.finished_at == finished_at
    total = session.scalar(select(func.count(Angle.id)).where(Angle.job_id == job.id))
    assert total == len(final)
    assert claims.lost_reason(session, job_id=job.id, claim=claim) == "it is succeeded"


def test_a_soup_finish_records_its_outcome(session: Session) -> None:
    from backend.schemas import SoupCreate
    from backend.submit import submit_soup

    a, b = finished_finetune(session, seed=0), finished_finetune(session, seed=1)
    soup = submit_soup(session, SoupCreate(ingredients=[a.id, b.id], method="greedy"))
    claim = claimed(session, soup)
    trace = [
        {"order": 0, "ingredient": 0, "job_id": a.id, "candidate_score": 0.8, "accepted": True}
    ]
    outcome = SoupOutcome(trace=trace, score_in=0.85, scores_out={"blur": 0.7})
    report = FinishReport(claim=claim, status="succeeded", soup=outcome)
    assert claims.finish_job(session, job_id=soup.id, claim=claim, report=report)
    session.refresh(soup)
    assert (soup.soup.trace, soup.soup.score_in, soup.soup.scores_out) == (
        trace,
        0.85,
        {"blur": 0.7},
    )


def test_shape_table_upsert(session: Session) -> None:
    claims.store_shape_table(session, key="k", model="m", table={"body": [], "head": []})
    claims.store_shape_table(session, key="k", model="m", table={"body": [["x", [1]]], "head": []})
    assert crud.get_shape_table(session, key="k") == {"body": [["x", [1]]], "head": []}


def test_extra_metrics_are_stored_json_safe(session: Session) -> None:
    job = queued_finetune(session)
    claim = claimed(session, job)
    metrics = {"epoch": 1, "test_acc": 0.5, "lr": 1e-3, "per_class": [1, 2], "nested": {"a": 1}}
    record = EpochRecord(epoch=1, metrics=metrics)
    assert claims.record_epoch(session, job_id=job.id, claim=claim, record=record)
    [row] = crud.get_metrics(session, job_id=job.id)
    assert row.test_acc == 0.5 and row.extra == {
        "lr": 1e-3,
        "per_class": [1, 2],
        "nested": {"a": 1},
    }

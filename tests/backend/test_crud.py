"""The user-side persistence helpers (reads, cancel, retry, the reconciler's release), on
SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.orm import Session

from backend import claims, crud
from backend.db.models import Job
from contract.api import FinishReport
from contract.vocab import JobStatus
from tests.utils.factories import claimed, finished_finetune, queued_finetune


def test_reads_of_a_finished_job(session: Session) -> None:
    job = finished_finetune(session, test_acc=0.9)
    assert [(m.epoch, m.test_acc) for m in crud.get_metrics(session, job_id=job.id)] == [
        (1, 0.45),
        (2, 0.9),
    ]
    assert crud.final_metrics(session, job_ids=[job.id])[job.id].epoch == 2
    assert crud.final_unit_angles(session, job_id=job.id)["FFN.3"] == 23.0
    assert crud.get_jobs(session, job_ids=[job.id, 10**6]) == {job.id: job}


def test_cancel_and_retry_transitions(session: Session) -> None:
    job = queued_finetune(session)
    claim = claimed(session, job)
    assert crud.request_cancel(session, job_id=job.id) == JobStatus.RUNNING
    assert claims.heartbeat(session, job_id=job.id, claim=claim) is True  # the worker learns it
    with pytest.raises(crud.JobStateError, match="only failed or cancelled"):
        crud.reset_for_retry(session, job_id=job.id)
    stopped = FinishReport(claim=claim, status=JobStatus.CANCELLED)
    assert claims.finish_job(session, job_id=job.id, claim=claim, report=stopped)
    with pytest.raises(crud.JobStateError, match="only queued or running"):
        crud.request_cancel(session, job_id=job.id)
    retried = crud.reset_for_retry(session, job_id=job.id)
    assert (retried.status, retried.attempts, retried.cancel_requested) == ("queued", 0, False)
    assert retried.claim is None
    with pytest.raises(LookupError):
        crud.request_cancel(session, job_id=10**6)


def test_release_stale_jobs_clears_their_claims(session: Session) -> None:
    fresh, stale, exhausted, cancelling = (queued_finetune(session) for _ in range(4))
    tokens = {job.id: claimed(session, job) for job in (fresh, stale, exhausted, cancelling)}
    session.query(Job).filter(Job.id == exhausted.id).update({"attempts": 3})
    session.commit()
    crud.request_cancel(session, job_id=cancelling.id)
    time.sleep(1.0)
    assert claims.heartbeat(session, job_id=fresh.id, claim=tokens[fresh.id]) is False
    requeued, failed, cancelled = crud.release_stale_jobs(
        session, stale_after_s=0.8, max_attempts=3
    )
    assert (requeued, failed, cancelled) == ([stale.id], [exhausted.id], [cancelling.id])
    for job in (fresh, stale, exhausted, cancelling):
        session.refresh(job)
    assert fresh.status == "running" and fresh.claim == tokens[fresh.id]
    assert stale.status == "queued" and stale.worker is None and stale.claim is None
    assert exhausted.status == "failed" and "3 attempts" in exhausted.error
    assert exhausted.claim is None and cancelling.claim is None
    # The lost workers' reports are refused from now on.
    for job in (stale, exhausted, cancelling):
        assert claims.heartbeat(session, job_id=job.id, claim=tokens[job.id]) is None


def test_queued_job_ids_respects_the_grace_period(session: Session) -> None:
    job = queued_finetune(session)  # submitted: stamped as enqueued now
    assert crud.queued_job_ids(session, enqueued_before_s=60) == []
    assert crud.queued_job_ids(session, enqueued_before_s=0) == [job.id]

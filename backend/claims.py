"""A worker's writes, each applied only while its claim still owns the job (no HTTP here).

The worker routes (`backend.api.routes.worker`) call these; nothing else writes what a run
produced. A claim is a token handed out per attempt (``jobs.claim``): `claim_job` sets a new
one, and every later write is guarded by a conditional UPDATE on (job, running, claim) in the
same transaction as the rows it writes. Once the reconciler re-queued the job (stale heartbeat)
or another worker re-claimed it, the old claim's writes change nothing and return False.
Time stamps are the API's clock, never the worker's. Each function commits.

A worker's life with a job::

    job = claim_job(s, job_id=..., worker=name, stale_after_s=...)   # None: not claimable
    heartbeat(s, job_id=..., claim=job.claim, progress=0.3, info={...})  # cancel flag, or None
    record_epoch(s, job_id=..., claim=..., record=EpochRecord(...))  # upsert by (job, epoch)
    finish_job(s, job_id=..., claim=..., report=FinishReport(...))   # one transaction

`fail_killed_job` is the one write a claim may make after the reconciler re-queued its job:
the kernel killed the attempt's process for memory, its heartbeat having stalled first.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import and_, delete, false, func, or_, select, update
from sqlalchemy.orm import Session

from backend.crud import ago
from backend.db.models import Angle, Artifact, Job, Metric, ShapeTable, Soup, utcnow
from backend.db.upsert import upsert
from contract.api import (
    AngleRow,
    ArtifactReport,
    EpochRecord,
    FinishReport,
    KillReport,
    MetricPublic,
    ReleaseReport,
    SoupOutcome,
)
from contract.vocab import FINAL_EPOCH, TERMINAL_STATUSES, JobStatus

log = logging.getLogger(__name__)

# Metrics with a column of their own (those `MetricPublic` shows); any other key goes to extra.
METRIC_FIELDS = tuple(f for f in MetricPublic.model_fields if f not in ("epoch", "extra"))


def claim_job(session: Session, *, job_id: int, worker: str, stale_after_s: float) -> Job | None:
    """Atomically gives a queued job to ``worker`` under a new claim; None if not claimable.

    Not claimable: unknown, running elsewhere with a fresh heartbeat, finished, or cancelled
    (a queued job whose cancel was requested is marked cancelled here). A running job whose
    heartbeat is older than ``stale_after_s`` is claimable: its worker died and the broker
    redelivered the task. Increments ``attempts``; exactly one of concurrent claims wins.
    """
    now = utcnow()
    claimable = or_(
        Job.status == JobStatus.QUEUED,
        and_(
            Job.status == JobStatus.RUNNING,
            func.coalesce(Job.heartbeat_at, Job.started_at) < ago(now, stale_after_s),
        ),
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(True))
        .values(status=JobStatus.CANCELLED, finished_at=now)
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False))
        .values(
            status=JobStatus.RUNNING,
            worker=worker,
            claim=new_claim(),
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            error=None,
        )
    )
    session.commit()
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id)
    session.refresh(job)
    return job


def new_claim() -> str:
    return uuid.uuid4().hex


def _well_formed(claim: str) -> bool:
    """Whether ``claim`` looks like a token `new_claim` makes (others can never own a job)."""
    return len(claim) == 32 and all(c in "0123456789abcdef" for c in claim)


def _owned(job_id: int, claim: str) -> tuple:
    if not _well_formed(claim):
        return (false(),)
    return (Job.id == job_id, Job.status == JobStatus.RUNNING, Job.claim == claim)


def heartbeat(
    session: Session,
    *,
    job_id: int,
    claim: str,
    progress: float | None = None,
    info: Mapping[str, Any] | None = None,
) -> bool | None:
    """Refreshes the job's heartbeat (and progress 0-1, progress info); returns whether a
    cancel was requested, or None when ``claim`` no longer owns the job (stop working on it)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = min(max(float(progress), 0.0), 1.0)
    if info:
        values["progress_info"] = _json_value(dict(info))
    stmt = update(Job).where(*_owned(job_id, claim)).values(**values)
    flag = session.execute(stmt.returning(Job.cancel_requested)).scalar_one_or_none()
    session.commit()
    return None if flag is None else bool(flag)


def record_epoch(session: Session, *, job_id: int, claim: str, record: EpochRecord) -> bool:
    """Upserts one epoch's metrics and replaces its angle rows, if ``claim`` owns the job.

    Idempotent: a report sent twice (a retry after a lost answer) writes the same rows.
    """
    guard = update(Job).where(*_owned(job_id, claim)).values(heartbeat_at=utcnow())
    if session.execute(guard).rowcount != 1:
        session.rollback()
        return False
    _put_epoch(session, job_id, record)
    session.commit()
    return True


def finish_job(session: Session, *, job_id: int, claim: str, report: FinishReport) -> bool:
    """Ends the attempt in one transaction: epochs, final angles, artifacts, soup outcome and
    the terminal status, or nothing at all when ``claim`` no longer owns the job.

    Idempotent: once this claim finished the job, the same finish answers True again and
    writes nothing (the worker retried after losing the first answer).
    """
    if report.status not in TERMINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(sorted(TERMINAL_STATUSES))}")
    now = utcnow()
    values: dict[str, Any] = {"status": report.status, "finished_at": now, "error": report.error}
    values["heartbeat_at"] = now
    if report.result is not None:
        values["result"] = _json_value(report.result)
    if report.status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    if session.execute(update(Job).where(*_owned(job_id, claim)).values(**values)).rowcount != 1:
        session.rollback()
        return _finished_by(session, job_id, claim)
    for record in report.epochs:
        _put_epoch(session, job_id, record)
    if report.angles:
        _replace_angles(session, job_id, FINAL_EPOCH, report.angles)
    for artifact in report.artifacts:
        _put_artifact(session, job_id, artifact, now)
    if report.soup is not None:
        _put_soup(session, job_id, report.soup)
    session.commit()
    return True


def release_job(session: Session, *, job_id: int, claim: str, report: ReleaseReport) -> bool:
    """Gives a running job back to the queue, if ``claim`` owns it: a worker that is stopping
    (SIGTERM, Ctrl-C of the launcher) saved its state mid-epoch and will not go on. The claim
    is cleared (its later reports are refused), the attempt is given back (it ran into no
    fault), and the attempt's epochs are recorded, in one transaction. False when ``claim`` no
    longer owns the job; the caller then enqueues it.
    """
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED,
        "claim": None,
        "worker": None,
        "enqueued_at": None,
        "attempts": Job.attempts - 1,
        "heartbeat_at": utcnow(),
    }
    if session.execute(update(Job).where(*_owned(job_id, claim)).values(**values)).rowcount != 1:
        session.rollback()
        return False
    for record in report.epochs:
        _put_epoch(session, job_id, record)
    session.commit()
    log.info("job %s released by its worker (%s); queued again", job_id, report.reason)
    return True


def fail_killed_job(session: Session, *, job_id: int, report: KillReport) -> bool:
    """Fails a job whose process the kernel killed for memory: while ``report.claim`` owns it,
    or once the reconciler queued it again because that attempt's heartbeat went stale (its
    process stalled as memory ran out) and no later attempt has claimed it. The claim is kept
    on the row, so a repeated report is answered as taken. False otherwise."""
    if not _well_formed(report.claim):
        return False
    requeued_by_it = and_(
        Job.status == JobStatus.QUEUED,
        Job.claim.is_(None),
        Job.attempts == report.attempt,
        Job.cancel_requested.is_(False),
    )
    now = utcnow()
    values = {
        "status": JobStatus.FAILED,
        "claim": report.claim,
        "error": report.error,
        "finished_at": now,
        "heartbeat_at": now,
    }
    owned = or_(and_(*_owned(job_id, report.claim)), and_(Job.id == job_id, requeued_by_it))
    if session.execute(update(Job).where(owned).values(**values)).rowcount != 1:
        session.rollback()
        return _finished_by(session, job_id, report.claim)
    session.commit()
    log.info("job %s failed: its process was killed for memory", job_id)
    return True


def _finished_by(session: Session, job_id: int, claim: str) -> bool:
    row = session.execute(select(Job.status, Job.claim).where(Job.id == job_id)).first()
    session.commit()
    return row is not None and row.claim == claim and row.status in TERMINAL_STATUSES


def lost_reason(session: Session, *, job_id: int, claim: str | None = None) -> str | None:
    """Why ``claim`` cannot write to the job, in words; None when the job does not exist."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    session.refresh(job)
    if job.status == JobStatus.RUNNING:
        return "another worker claimed it" if job.claim != claim else "it is running"
    if job.status == JobStatus.QUEUED:
        return "it was put back in the queue"
    return f"it is {job.status}"


def store_shape_table(session: Session, *, key: str, model: str, table: Mapping[str, Any]) -> None:
    """Caches a unit-map shape table (``pft.model_catalog.shape_key`` as key) for the API."""
    values = {"key": key, "model": model, "table": dict(table), "created_at": utcnow()}
    upsert(session, ShapeTable, values, ("key",))
    session.commit()


# --------------------------------------------------------------------------------------------
# rows (no commit)


def _json_value(value: Any) -> Any:
    """Numbers as floats (a NaN stays a float); anything else JSON-safe as is."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _put_epoch(session: Session, job_id: int, record: EpochRecord) -> None:
    values: dict[str, Any] = {"job_id": job_id, "epoch": record.epoch, "recorded_at": utcnow()}
    extra: dict[str, Any] = {}
    for key, value in record.metrics.items():
        if key in METRIC_FIELDS:
            values[key] = None if value is None else float(value)
        elif key != "epoch":
            extra[key] = _json_value(value)
    for key in METRIC_FIELDS:
        values.setdefault(key, None)
    values["extra"] = extra
    upsert(session, Metric, values, ("job_id", "epoch"))
    if record.angles:
        _replace_angles(session, job_id, record.epoch, record.angles)


def _replace_angles(session: Session, job_id: int, epoch: int, rows: Iterable[AngleRow]) -> None:
    unique = {(r.scope, r.name): r for r in rows}  # one row per (scope, name): the last wins
    session.execute(delete(Angle).where(Angle.job_id == job_id, Angle.epoch == epoch))
    session.add_all(
        Angle(job_id=job_id, epoch=epoch, **r.model_dump(include=_ANGLE_COLUMNS))
        for r in unique.values()
    )


_ANGLE_COLUMNS = set(AngleRow.model_fields)  # every field of a row is a column


def _put_artifact(session: Session, job_id: int, artifact: ArtifactReport, now: Any) -> None:
    values = {"job_id": job_id, **artifact.model_dump(), "created_at": now}
    upsert(session, Artifact, values, ("job_id", "kind"))


def _put_soup(session: Session, job_id: int, soup: SoupOutcome) -> None:
    session.execute(
        update(Soup)
        .where(Soup.job_id == job_id)
        .values(
            trace=_json_value(soup.trace),
            score_in=soup.score_in,
            scores_out=dict(soup.scores_out),
            mixing=_json_value(soup.mixing),
        )
    )

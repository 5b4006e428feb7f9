"""Database operations the user routes and the reconciler need (no HTTP here).

Every function takes the session first and keyword-only arguments after it. Creation helpers
(``create_experiment``, ``create_job``, ``create_soup``) add and flush but do not commit, so one
request writes all of its rows or none; the caller commits. The state changes (cancel, retry,
the reconciler's) commit themselves and are conditional UPDATEs, safe under concurrency.

What a worker writes goes through `backend.claims` (the worker routes), never through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from backend.db.models import Angle, Artifact, Experiment, Job, Metric, ShapeTable, Soup, utcnow
from contract.vocab import FINAL_EPOCH, AngleScope, JobKind, JobStatus

DELTA_ARTIFACT = "delta"  # the artifact kind of a fine-tuning job's checkpoint delta


class JobStateError(ValueError):
    """The job is not in a state that allows the operation (message safe to show users)."""


# --------------------------------------------------------------------------------------------
# creation (caller commits)


def create_experiment(
    session: Session,
    *,
    name: str,
    model: str,
    dataset: str,
    hparams: Mapping[str, Any],
    config: Mapping[str, Any],
) -> Experiment:
    experiment = Experiment(
        name=name, model=model, dataset=dataset, hparams=dict(hparams), config=dict(config)
    )
    session.add(experiment)
    session.flush()
    return experiment


def create_job(
    session: Session,
    *,
    kind: JobKind,
    config: Mapping[str, Any],
    experiment_id: int | None = None,
    model: str | None = None,
    dataset: str | None = None,
    strategy: str | None = None,
    seed: int | None = None,
    tuned_params: int | None = None,
    total_params: int | None = None,
) -> Job:
    """Adds a queued job (not yet enqueued: call `mark_enqueued` after sending it).

    ``config`` is the job's spec, ``spec.to_dict()`` (`backend.submit` builds it).
    """
    job = Job(
        kind=kind,
        status=JobStatus.QUEUED,
        config=dict(config),
        experiment_id=experiment_id,
        model=model,
        dataset=dataset,
        strategy=strategy,
        seed=seed,
        tuned_params=tuned_params,
        total_params=total_params,
        progress=0.0,
        progress_info={},
        attempts=0,
        cancel_requested=False,
    )
    session.add(job)
    session.flush()
    return job


def create_soup(
    session: Session, *, job_id: int, method: str, ingredients: Sequence[int], shifts: Sequence[str]
) -> Soup:
    soup = Soup(
        job_id=job_id,
        method=method,
        ingredients=list(ingredients),
        shifts=list(shifts),
        trace=[],
        scores_out={},
    )
    session.add(soup)
    session.flush()
    return soup


# --------------------------------------------------------------------------------------------
# reads


def get_job(session: Session, *, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def get_jobs(session: Session, *, job_ids: Iterable[int]) -> dict[int, Job]:
    ids = list(set(job_ids))
    if not ids:
        return {}
    return {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}


def _job_filter(
    query: Select, experiment_id: int | None, status: str | None, kind: str | None
) -> Select:
    if experiment_id is not None:
        query = query.where(Job.experiment_id == experiment_id)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return query


def list_jobs(
    session: Session,
    *,
    experiment_id: int | None = None,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and the total count matching the filters."""
    total = session.scalar(_job_filter(select(func.count(Job.id)), experiment_id, status, kind))
    query = _job_filter(select(Job), experiment_id, status, kind)
    jobs = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return list(jobs), int(total or 0)


def get_experiment(session: Session, *, experiment_id: int) -> Experiment | None:
    return session.get(Experiment, experiment_id)


def list_experiments(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[list[Experiment], int]:
    total = session.scalar(select(func.count(Experiment.id)))
    query = select(Experiment).order_by(Experiment.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(query)), int(total or 0)


def experiment_jobs(session: Session, *, experiment_id: int) -> list[Job]:
    query = select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id)
    return list(session.scalars(query))


def get_metrics(session: Session, *, job_id: int) -> list[Metric]:
    return list(session.scalars(select(Metric).where(Metric.job_id == job_id).order_by("epoch")))


def final_metrics(session: Session, *, job_ids: Iterable[int]) -> dict[int, Metric]:
    """The last recorded epoch of each job (jobs without metrics are absent)."""
    ids = list(set(job_ids))
    if not ids:
        return {}
    last = (
        select(Metric.job_id, func.max(Metric.epoch).label("epoch"))
        .where(Metric.job_id.in_(ids))
        .group_by(Metric.job_id)
        .subquery()
    )
    query = select(Metric).join(
        last, and_(Metric.job_id == last.c.job_id, Metric.epoch == last.c.epoch)
    )
    return {m.job_id: m for m in session.scalars(query)}


def get_angles(session: Session, *, job_id: int) -> list[Angle]:
    query = select(Angle).where(Angle.job_id == job_id).order_by(Angle.epoch, Angle.id)
    return list(session.scalars(query))


def final_unit_angles(session: Session, *, job_id: int) -> dict[str, float]:
    """{unit: degrees} measured on a job's final weights; empty if none were recorded."""
    query = select(Angle.name, Angle.angle_deg).where(
        Angle.job_id == job_id, Angle.epoch == FINAL_EPOCH, Angle.scope == AngleScope.UNIT
    )
    return {name: deg for name, deg in session.execute(query)}


def get_artifacts(session: Session, *, job_id: int) -> list[Artifact]:
    query = select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.kind)
    return list(session.scalars(query))


def artifacts_of_kind(
    session: Session, *, job_ids: Iterable[int], kind: str
) -> dict[int, Artifact]:
    """{job id: its artifact of ``kind``} for the jobs that have one."""
    ids = list(set(job_ids))
    if not ids:
        return {}
    query = select(Artifact).where(Artifact.job_id.in_(ids), Artifact.kind == kind)
    return {a.job_id: a for a in session.scalars(query)}


def get_shape_table(session: Session, *, key: str) -> dict | None:
    row = session.get(ShapeTable, key)
    return None if row is None else row.table


# --------------------------------------------------------------------------------------------
# user actions (each commits)


def mark_enqueued(session: Session, *, job_ids: Iterable[int]) -> None:
    """Records that the jobs were just sent to the broker (the reconciler's grace period)."""
    ids = list(job_ids)
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.QUEUED)
            .values(enqueued_at=utcnow())
        )
        session.commit()


def request_cancel(session: Session, *, job_id: int) -> JobStatus:
    """Cancels a queued job at once, or flags a running one for its worker to stop (the
    worker learns it from its next heartbeat's reply).

    Returns the job's status afterwards (cancelled or running); raises JobStateError for
    finished jobs and LookupError for unknown ones.
    """
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now)
    )
    if queued.rowcount == 1:
        session.commit()
        return JobStatus.CANCELLED
    running = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested=True)
    )
    session.commit()
    if running.rowcount == 1:
        return JobStatus.RUNNING
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise LookupError(f"no job {job_id}")
    raise JobStateError(f"job {job_id} is {status}; only queued or running jobs can be cancelled")


def reset_for_retry(session: Session, *, job_id: int) -> Job:
    """Puts a failed or cancelled job back in the queue (the caller enqueues it)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.FAILED, JobStatus.CANCELLED)))
        .values(
            status=JobStatus.QUEUED,
            attempts=0,
            error=None,
            cancel_requested=False,
            progress=0.0,
            progress_info={},
            worker=None,
            claim=None,
            started_at=None,
            heartbeat_at=None,
            finished_at=None,
            enqueued_at=None,
        )
    )
    session.commit()
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    session.refresh(job)
    if result.rowcount != 1:
        raise JobStateError(
            f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
        )
    return job


# --------------------------------------------------------------------------------------------
# reconciler


def ago(now: datetime, seconds: float) -> datetime:
    return now - timedelta(seconds=seconds)


def queued_job_ids(session: Session, *, enqueued_before_s: float) -> list[int]:
    """Queued jobs never enqueued, or last enqueued more than ``enqueued_before_s`` ago."""
    cutoff = ago(utcnow(), enqueued_before_s)
    query = select(Job.id).where(
        Job.status == JobStatus.QUEUED,
        Job.cancel_requested.is_(False),
        or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff),
    )
    ids = list(session.scalars(query.order_by(Job.id)))
    session.commit()
    return ids


def release_stale_jobs(
    session: Session, *, stale_after_s: float, max_attempts: int
) -> tuple[list[int], list[int], list[int]]:
    """Running jobs whose heartbeat is older than ``stale_after_s``: their worker is presumed lost.

    Each goes back to queued, or to failed once it has been claimed ``max_attempts`` times, or
    to cancelled if a cancel was requested. Every transition clears the claim, so the lost
    worker's later reports are refused. Returns (requeued, failed, cancelled) job ids; the
    caller enqueues the requeued ones. Conditional updates: safe with concurrent reconcilers.
    """
    now = utcnow()
    cutoff = ago(now, stale_after_s)
    last_seen = func.coalesce(Job.heartbeat_at, Job.started_at)
    stale = select(Job.id, Job.attempts, Job.cancel_requested).where(
        Job.status == JobStatus.RUNNING, last_seen < cutoff
    )
    requeued, failed, cancelled = [], [], []
    for job_id, attempts, cancel in session.execute(stale).all():
        guard = (Job.id == job_id, Job.status == JobStatus.RUNNING, last_seen < cutoff)
        values: dict[str, Any] = {"claim": None}
        if cancel:
            values |= {"status": JobStatus.CANCELLED, "finished_at": now}
            bucket = cancelled
        elif attempts >= max_attempts:
            values |= {
                "status": JobStatus.FAILED,
                "finished_at": now,
                "error": f"worker lost (no heartbeat for {stale_after_s:g} s) "
                f"on each of {attempts} attempts",
            }
            bucket = failed
        else:
            values |= {"status": JobStatus.QUEUED, "worker": None, "enqueued_at": None}
            bucket = requeued
        if session.execute(update(Job).where(*guard).values(**values)).rowcount == 1:
            bucket.append(job_id)
    session.commit()
    return requeued, failed, cancelled

"""Database operations on the lab's schema, shared by the API and the worker (no HTTP here).

Every function takes the session first and keyword-only arguments after it.

Two kinds of helpers:

* **Creation** helpers (``create_experiment``, ``create_job``, ``create_soup``) add and flush
  but do not commit, so one request writes all of its rows or none; the caller commits.
* **Lifecycle** helpers used by the worker and the reconciler commit themselves: each is one
  atomic step, written as a conditional UPDATE or an upsert so that a redelivered task, a second
  worker or a concurrent reconciler cannot run a job twice or duplicate its results.

A worker's life with a job, in order::

    job = claim_job(s, job_id=..., worker=name)        # None: not ours to run; ack and return
    ... heartbeat(s, job_id=..., worker=name, progress=0.3, info={...})  # False: lost the job
    ... if is_cancel_requested(s, job_id=...): stop, then finish_job(..., status="cancelled")
    ... record_epoch(s, job_id=..., epoch=e, metrics={...})             # upsert per epoch
    ... record_angles(s, job_id=..., epoch=e, angles={...})             # per epoch, or final
    record_artifact(s, job_id=..., kind="delta", location=..., size_bytes=..., sha256=...)
    record_soup_result(...)                                            # soup jobs only
    finish_job(s, job_id=..., worker=name, status="succeeded", result=summary)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from backend.db.models import (
    ANGLE_SCOPES,
    FINAL_EPOCH,
    TERMINAL_STATUSES,
    Angle,
    Artifact,
    Experiment,
    Job,
    Metric,
    ShapeTable,
    Soup,
    utcnow,
)

METRIC_FIELDS = (
    "train_loss",
    "heldout_acc",
    "heldout_loss",
    "test_acc",
    "test_loss",
    "images_per_sec",
)


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
    kind: str,
    config: Mapping[str, Any],
    experiment_id: int | None = None,
    model: str | None = None,
    dataset: str | None = None,
    strategy: str | None = None,
    seed: int | None = None,
    tuned_params: int | None = None,
    total_params: int | None = None,
) -> Job:
    """Adds a queued job (not yet enqueued: call `mark_enqueued` after sending it)."""
    job = Job(
        kind=kind,
        status="queued",
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
    status: str | None = None,
    kind: str | None = None,
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
        Angle.job_id == job_id, Angle.epoch == FINAL_EPOCH, Angle.scope == "unit"
    )
    return {name: deg for name, deg in session.execute(query)}


def get_soup(session: Session, *, soup_id: int) -> Soup | None:
    return session.get(Soup, soup_id)


def get_artifacts(session: Session, *, job_id: int) -> list[Artifact]:
    query = select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.kind)
    return list(session.scalars(query))


def get_shape_table(session: Session, *, key: str) -> dict | None:
    row = session.get(ShapeTable, key)
    return None if row is None else row.table


# --------------------------------------------------------------------------------------------
# upserts


def _upsert(session: Session, model: type, values: Mapping[str, Any], keys: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE on SQLite and PostgreSQL."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the lab supports SQLite and PostgreSQL
        raise NotImplementedError(f"upserts on {dialect}")
    stmt = insert(model).values(**values)
    changed = {k: stmt.excluded[k] for k in values if k not in keys}
    session.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=changed))


# --------------------------------------------------------------------------------------------
# lifecycle (each commits)


def mark_enqueued(session: Session, *, job_ids: Iterable[int]) -> None:
    """Records that the jobs were just sent to the broker (the reconciler's grace period)."""
    ids = list(job_ids)
    if ids:
        session.execute(
            update(Job).where(Job.id.in_(ids), Job.status == "queued").values(enqueued_at=utcnow())
        )
        session.commit()


def claim_job(
    session: Session, *, job_id: int, worker: str, stale_after_s: float | None = None
) -> Job | None:
    """Atomically moves a queued job to running for ``worker``; None if it is not claimable.

    Not claimable: unknown, already running elsewhere, finished, or cancelled (a queued job
    whose cancel was requested is marked cancelled here). With ``stale_after_s``, a running job
    whose heartbeat is older than that is claimable too (its worker died and the broker
    redelivered the task). Increments ``attempts``. Exactly one of several concurrent claims wins.
    """
    now = utcnow()
    claimable = Job.status == "queued"
    if stale_after_s is not None:
        cutoff = _ago(now, stale_after_s)
        claimable = or_(
            claimable,
            and_(Job.status == "running", func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff),
        )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(True))
        .values(status="cancelled", finished_at=now)
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False))
        .values(
            status="running",
            worker=worker,
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            error=None,
        )
    )
    session.commit()
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id)
    session.refresh(job)
    return job


def heartbeat(
    session: Session,
    *,
    job_id: int,
    worker: str,
    progress: float | None = None,
    info: Mapping[str, Any] | None = None,
) -> bool:
    """Refreshes a running job's heartbeat (and progress 0-1, progress info).

    Returns False when ``worker`` no longer owns the job (the reconciler gave it to another
    worker, or it was finished): the worker should stop working on it.
    """
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = min(max(float(progress), 0.0), 1.0)
    if info is not None:
        values["progress_info"] = dict(info)
    return _update_owned(session, job_id=job_id, worker=worker, values=values)


def _update_owned(session: Session, *, job_id: int, worker: str, values: Mapping[str, Any]) -> bool:
    """Updates a running job only if ``worker`` still owns it; False when it has lost the job."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
        .values(**values)
    )
    session.commit()
    return result.rowcount == 1


def is_cancel_requested(session: Session, *, job_id: int) -> bool:
    """True when a user asked to cancel the job (poll it every few steps)."""
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    session.commit()  # end the read transaction so the next poll sees fresh data
    return bool(flag)


def _json_value(value: Any) -> Any:
    """Numbers (numpy and torch scalars too) as floats; anything else JSON-safe as is."""
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


def record_epoch(session: Session, *, job_id: int, epoch: int, metrics: Mapping[str, Any]) -> None:
    """Upserts one epoch's metrics; a redelivered epoch overwrites the row, never duplicates.

    Known keys (METRIC_FIELDS) get columns; other keys go to ``extra``.
    """
    values: dict[str, Any] = {"job_id": job_id, "epoch": int(epoch), "recorded_at": utcnow()}
    extra: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in METRIC_FIELDS:
            values[key] = None if value is None else float(value)
        elif key != "epoch":
            extra[key] = _json_value(value)
    for key in METRIC_FIELDS:
        values.setdefault(key, None)
    values["extra"] = extra
    _upsert(session, Metric, values, ("job_id", "epoch"))
    session.commit()


def _angle_rows(angles: Mapping[str, Any]) -> Iterable[tuple[str, str, float, float | None]]:
    """(scope, name, degrees, rel_change) from either angle format of docs/CONTRACTS.md."""
    for scope, key in zip(ANGLE_SCOPES, ("units", "tensors"), strict=True):
        entries = angles.get(key) or {}
        if isinstance(entries, Mapping):  # engine on_epoch: {name: degrees}
            for name, deg in entries.items():
                if deg is not None:  # None: undefined angle of an all-zero tensor
                    yield scope, name, float(deg), None
        else:  # AngleReport.to_dict(): [{"name", "angle_deg", "rel_change"?}]
            for entry in entries:
                if entry.get("angle_deg") is None:
                    continue
                rel = entry.get("rel_change")
                yield scope, entry["name"], float(entry["angle_deg"]), rel


def record_angles(
    session: Session, *, job_id: int, angles: Mapping[str, Any], epoch: int | None = None
) -> int:
    """Replaces a job's angles for one epoch (``epoch=None``: the final weights).

    ``angles`` is ``{"units": {unit: deg}, "tensors": {tensor: deg}}`` (engine ``on_epoch``) or
    ``AngleReport.to_dict()``. Returns the number of rows written.
    """
    epoch = FINAL_EPOCH if epoch is None else int(epoch)
    rows = [
        Angle(job_id=job_id, epoch=epoch, scope=scope, name=name, angle_deg=deg, rel_change=rel)
        for scope, name, deg, rel in _angle_rows(angles)
    ]
    session.execute(delete(Angle).where(Angle.job_id == job_id, Angle.epoch == epoch))
    session.add_all(rows)
    session.commit()
    return len(rows)


def record_artifact(
    session: Session, *, job_id: int, kind: str, location: str, size_bytes: int, sha256: str
) -> None:
    """Upserts the job's artifact of ``kind`` ("delta", "metrics", "angles", "soup", ...)."""
    values = {
        "job_id": job_id,
        "kind": kind,
        "location": location,
        "size_bytes": int(size_bytes),
        "sha256": sha256,
        "created_at": utcnow(),
    }
    _upsert(session, Artifact, values, ("job_id", "kind"))
    session.commit()


def record_soup_result(
    session: Session,
    *,
    job_id: int,
    trace: Sequence[Mapping[str, Any]],
    score_in: float | None,
    scores_out: Mapping[str, float],
) -> None:
    """Stores a soup job's outcome: the greedy trace and its scores in and out of distribution.

    ``trace`` entries: ``{"order": i, "job_id": id, "candidate_score": acc, "accepted": bool}``.
    """
    session.execute(
        update(Soup)
        .where(Soup.job_id == job_id)
        .values(
            trace=[dict(t) for t in trace],
            score_in=None if score_in is None else float(score_in),
            scores_out={k: float(v) for k, v in scores_out.items()},
        )
    )
    session.commit()


def store_shape_table(session: Session, *, key: str, model: str, table: Mapping[str, Any]) -> None:
    """Caches a unit-map shape table (``pft.model_catalog.shape_key`` as key) for the API."""
    values = {"key": key, "model": model, "table": dict(table), "created_at": utcnow()}
    _upsert(session, ShapeTable, values, ("key",))
    session.commit()


def finish_job(
    session: Session,
    *,
    job_id: int,
    worker: str,
    status: str,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Moves ``worker``'s running job to a terminal status; False if it no longer owns it."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if result is not None:
        values["result"] = dict(result)
    if status == "succeeded":
        values["progress"] = 1.0
    return _update_owned(session, job_id=job_id, worker=worker, values=values)


def request_cancel(session: Session, *, job_id: int) -> str:
    """Cancels a queued job at once, or flags a running one for its worker to stop.

    Returns the job's status afterwards ("cancelled" or "running"); raises JobStateError for
    finished jobs and LookupError for unknown ones.
    """
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
    )
    if queued.rowcount == 1:
        session.commit()
        return "cancelled"
    running = session.execute(
        update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True)
    )
    session.commit()
    if running.rowcount == 1:
        return "running"
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise LookupError(f"no job {job_id}")
    raise JobStateError(f"job {job_id} is {status}; only queued or running jobs can be cancelled")


def reset_for_retry(session: Session, *, job_id: int) -> Job:
    """Puts a failed or cancelled job back in the queue (the caller enqueues it)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("failed", "cancelled")))
        .values(
            status="queued",
            attempts=0,
            error=None,
            cancel_requested=False,
            progress=0.0,
            progress_info={},
            worker=None,
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


def _ago(now: datetime, seconds: float) -> datetime:
    return now - timedelta(seconds=seconds)


def queued_job_ids(session: Session, *, enqueued_before_s: float) -> list[int]:
    """Queued jobs never enqueued, or last enqueued more than ``enqueued_before_s`` ago."""
    cutoff = _ago(utcnow(), enqueued_before_s)
    query = select(Job.id).where(
        Job.status == "queued",
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
    to cancelled if a cancel was requested. Returns (requeued, failed, cancelled) job ids; the
    caller enqueues the requeued ones. Conditional updates: safe with concurrent reconcilers.
    """
    now = utcnow()
    cutoff = _ago(now, stale_after_s)
    last_seen = func.coalesce(Job.heartbeat_at, Job.started_at)
    stale = select(Job.id, Job.attempts, Job.cancel_requested).where(
        Job.status == "running", last_seen < cutoff
    )
    requeued, failed, cancelled = [], [], []
    for job_id, attempts, cancel in session.execute(stale).all():
        guard = (Job.id == job_id, Job.status == "running", last_seen < cutoff)
        if cancel:
            values: dict[str, Any] = {"status": "cancelled", "finished_at": now}
            bucket = cancelled
        elif attempts >= max_attempts:
            values = {
                "status": "failed",
                "finished_at": now,
                "error": f"worker lost (no heartbeat for {stale_after_s:g} s) "
                f"on each of {attempts} attempts",
            }
            bucket = failed
        else:
            values = {"status": "queued", "worker": None, "enqueued_at": None}
            bucket = requeued
        if session.execute(update(Job).where(*guard).values(**values)).rowcount == 1:
            bucket.append(job_id)
    session.commit()
    return requeued, failed, cancelled

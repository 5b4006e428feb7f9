"""The worker routes (`contract.vocab.WORKER_ROUTES`, worker token): a worker claims a job,
reports heartbeats and epochs, and finishes it, each report under its claim.

Every write is applied by `backend.claims` in one conditional UPDATE on (job, running, claim),
so a worker that lost the job (the reconciler re-queued it after a stale heartbeat, another
worker claimed it, it finished) gets 409 and changes nothing. Time stamps are the API's.
Payloads: `contract.api` (ClaimRequest, Claim, HeartbeatReport, EpochReport, FinishReport,
ShapeTableReport).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, HTTPException, Path, status
from sqlalchemy.orm import Session

from backend import claims, crud
from backend.api.deps import IdPath, SessionDep, SettingsDep
from backend.db.models import Job
from backend.enqueue import enqueue_jobs
from backend.submit import InvalidRequest
from contract.api import (
    ArtifactRef,
    Claim,
    ClaimRequest,
    EpochReport,
    FinishReport,
    HeartbeatReply,
    HeartbeatReport,
    KillReport,
    ReleaseReport,
    ShapeTableReport,
)
from contract.vocab import TERMINAL_STATUSES, WORKER_ROUTES, JobKind
from pft.jobs.specs import SoupSpec

router = APIRouter(prefix=WORKER_ROUTES, tags=["worker"])

_LOST = {
    404: {"description": "no such job"},
    409: {"description": "this claim no longer owns the job"},
}
EpochPath = Annotated[int, Path(ge=1, le=100_000, description="the epoch, from 1")]


def _lost(session: Session, job_id: int, claim: str | None) -> HTTPException:
    reason = claims.lost_reason(session, job_id=job_id, claim=claim)
    if reason is None:
        return HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return HTTPException(
        status.HTTP_409_CONFLICT, f"job {job_id} is no longer owned by this claim ({reason})"
    )


def _inputs(session: Session, job: Job) -> dict[str, ArtifactRef]:
    """A soup's ingredients: job id -> its delta checkpoint (those that have one)."""
    if job.kind != JobKind.SOUP:
        return {}
    ingredients = SoupSpec.from_dict(job.config).ingredients
    found = crud.artifacts_of_kind(session, job_ids=ingredients, kind=crud.DELTA_ARTIFACT)
    return {
        str(i): ArtifactRef(location=a.location, size_bytes=a.size_bytes, sha256=a.sha256)
        for i in ingredients
        if (a := found.get(i)) is not None
    }


@router.post("/jobs/{job_id}/claim", response_model=Claim, responses=_LOST)
def claim_job(
    job_id: IdPath, request: ClaimRequest, session: SessionDep, settings: SettingsDep
) -> Claim:
    """Gives the job to this worker under a new claim: queued, or running with a heartbeat
    older than ``PFT_HEARTBEAT_STALE_S`` (its worker died; the broker redelivered)."""
    job = claims.claim_job(
        session, job_id=job_id, worker=request.worker, stale_after_s=settings.heartbeat_stale_s
    )
    if job is None:
        current = crud.get_job(session, job_id=job_id)
        if current is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
        session.refresh(current)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} cannot be claimed: it is {current.status}"
            + (" under another claim with a fresh heartbeat" if current.claim else ""),
        )
    assert job.claim is not None
    return Claim(
        job_id=job.id,
        kind=JobKind(job.kind),
        spec=job.config,
        claim=job.claim,
        attempt=job.attempts,
        inputs=_inputs(session, job),
        origin=job.created_at.isoformat(),
    )


@router.post("/jobs/{job_id}/heartbeat", response_model=HeartbeatReply, responses=_LOST)
def heartbeat(job_id: IdPath, report: HeartbeatReport, session: SessionDep) -> HeartbeatReply:
    """Refreshes the heartbeat and progress; the reply says whether a cancel was requested."""
    flag = claims.heartbeat(
        session, job_id=job_id, claim=report.claim, progress=report.progress, info=report.info
    )
    if flag is None:
        raise _lost(session, job_id, report.claim)
    return HeartbeatReply(cancel_requested=flag)


@router.put(
    "/jobs/{job_id}/epochs/{epoch}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_LOST,
)
def put_epoch(job_id: IdPath, epoch: EpochPath, report: EpochReport, session: SessionDep) -> None:
    """One epoch's metrics and angle rows; sent again, it writes the same rows."""
    if report.epoch != epoch:
        raise InvalidRequest(("body", "epoch"), f"epoch {report.epoch} sent to epoch {epoch}")
    if not claims.record_epoch(session, job_id=job_id, claim=report.claim, record=report):
        raise _lost(session, job_id, report.claim)


@router.post("/jobs/{job_id}/finish", status_code=status.HTTP_204_NO_CONTENT, responses=_LOST)
def finish(job_id: IdPath, report: FinishReport, session: SessionDep) -> None:
    """Ends the attempt: every epoch, the final angles, the artifacts, the soup outcome and
    the terminal status, in one transaction. Sent again by the same claim: 204, no change."""
    if report.status not in TERMINAL_STATUSES:
        accepted = ", ".join(sorted(TERMINAL_STATUSES))
        raise InvalidRequest(("body", "status"), f"a finish needs one of {accepted}")
    if not claims.finish_job(session, job_id=job_id, claim=report.claim, report=report):
        raise _lost(session, job_id, report.claim)


@router.post("/jobs/{job_id}/release", status_code=status.HTTP_204_NO_CONTENT, responses=_LOST)
def release(
    job_id: IdPath,
    report: ReleaseReport,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
) -> None:
    """Gives the job back to the queue: the worker is stopping and saved the job's state (a
    mid-epoch checkpoint), so the next worker resumes there. The attempt does not count."""
    if not claims.release_job(session, job_id=job_id, claim=report.claim, report=report):
        raise _lost(session, job_id, report.claim)
    background.add_task(enqueue_jobs, [job_id], settings=settings)


@router.post("/jobs/{job_id}/killed", status_code=status.HTTP_204_NO_CONTENT, responses=_LOST)
def killed(job_id: IdPath, report: KillReport, session: SessionDep) -> None:
    """The kernel killed the process running the job for memory: the job fails with the
    report's error at once (no retry: it would die the same way), also when its heartbeat went
    stale first and it waits in the queue again, unless a later attempt claimed it."""
    if not claims.fail_killed_job(session, job_id=job_id, report=report):
        raise _lost(session, job_id, report.claim)


@router.put("/shape-tables", status_code=status.HTTP_204_NO_CONTENT)
def put_shape_table(report: ShapeTableReport, session: SessionDep) -> None:
    """A unit-map shape table a worker computed, for the API's previews of that model."""
    claims.store_shape_table(session, key=report.key, model=report.model, table=report.table)

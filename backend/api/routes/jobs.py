"""``/jobs``: submit, list, inspect, cancel and retry jobs; their metrics, angles and artifacts."""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from backend import artifact_files, crud, idempotency
from backend.api.deps import IdPath, SessionDep, SettingsDep
from backend.db.models import Job
from backend.enqueue import enqueue_job, enqueue_jobs
from backend.schemas import CalibrateCreate, FinetuneCreate, JobCreate, PretrainCreate, RankCreate
from backend.submit import (
    submit_calibrate,
    submit_finetune,
    submit_pretrain,
    submit_rank,
    submit_soup,
)
from contract.api import (
    AngleRow,
    AngleSet,
    AnglesPublic,
    ArtifactPublic,
    EpochAngles,
    JobPublic,
    JobsPage,
    MetricPublic,
)
from contract.vocab import FINAL_EPOCH, AngleScope, JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

_NOT_FOUND = {404: {"description": "no such job"}}


def get_job_or_404(session: SessionDep, job_id: int) -> Job:
    job = crud.get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job


@router.post("", status_code=201, response_model=JobPublic)
def create_job(
    request: Annotated[JobCreate, Body()],
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    response: Response,
    idempotency_key: idempotency.KeyHeader = None,
) -> Job:
    """Submits one job: ``finetune`` (the default kind; the registry's first strategy, full
    fine-tuning, by default), ``pretrain``, ``soup`` or ``rank`` (per-unit scores of a selection
    criterion, ``GET /catalog/criteria``) or ``calibrate`` (the cost preview's measurement,
    ``GET /cost``). The job is queued in the database when
    this answers, and sent to the broker right after. With an ``Idempotency-Key``, a retry of
    the same request answers the same job (header ``Idempotent-Replayed: true``)."""

    def submit() -> Job:
        if isinstance(request, FinetuneCreate):
            return submit_finetune(session, request, settings=settings)
        if isinstance(request, PretrainCreate):
            return submit_pretrain(session, request)
        if isinstance(request, RankCreate):
            return submit_rank(session, request, settings=settings)
        if isinstance(request, CalibrateCreate):
            return submit_calibrate(session, request, settings=settings)
        return submit_soup(session, request)

    job, replay = idempotency.submit_once(
        session, route="POST /jobs", key=idempotency_key, request=request, submit=submit
    )
    if replay is not None:
        response.headers[idempotency.REPLAYED] = "true"
        return get_job_or_404(session, replay.job_ids[0])
    background.add_task(enqueue_jobs, [job.id], settings=settings)
    return job


@router.get("", response_model=JobsPage)
def list_jobs(
    session: SessionDep,
    experiment_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobsPage:
    """Jobs, newest first, filtered by experiment, status and kind."""
    jobs, total = crud.list_jobs(
        session, experiment_id=experiment_id, status=status_, kind=kind, limit=limit, offset=offset
    )
    return JobsPage(
        items=[JobPublic.model_validate(j) for j in jobs], total=total, limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobPublic, responses=_NOT_FOUND)
def read_job(job_id: IdPath, session: SessionDep) -> Job:
    return get_job_or_404(session, job_id)


@router.get("/{job_id}/metrics", response_model=list[MetricPublic], responses=_NOT_FOUND)
def read_metrics(job_id: IdPath, session: SessionDep) -> list:
    """Per-epoch metrics (train loss, held-out and test accuracy, images/s)."""
    get_job_or_404(session, job_id)
    return crud.get_metrics(session, job_id=job_id)


@router.get("/{job_id}/angles", response_model=AnglesPublic, responses=_NOT_FOUND)
def read_angles(job_id: IdPath, session: SessionDep) -> AnglesPublic:
    """Fine-tuned angle rows (degrees, relative change, unit, group, block, part) per unit and
    per tensor: on the final weights and after each epoch."""
    get_job_or_404(session, job_id)
    sets: dict[int, AngleSet] = {}
    for a in crud.get_angles(session, job_id=job_id):
        target = sets.setdefault(a.epoch, AngleSet())
        row = AngleRow.model_validate(a)
        (target.units if a.scope == AngleScope.UNIT else target.tensors).append(row)
    final = sets.pop(FINAL_EPOCH, None)
    epochs = [
        EpochAngles(epoch=e, units=s.units, tensors=s.tensors) for e, s in sorted(sets.items())
    ]
    return AnglesPublic(job_id=job_id, final=final, epochs=epochs)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactPublic], responses=_NOT_FOUND)
def read_artifacts(job_id: IdPath, session: SessionDep) -> list:
    """Files the job produced (checkpoint delta, ...), with size and sha256."""
    get_job_or_404(session, job_id)
    return crud.get_artifacts(session, job_id=job_id)


ArtifactKind = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
_UNAVAILABLE = {  # why a recorded file cannot be served -> the answer's status
    artifact_files.ArtifactGone: 410,
    artifact_files.ArtifactCorrupt: 409,
    artifact_files.ArtifactOutsideStore: 409,
    artifact_files.StoreUnreachable: 502,
}


@router.get(
    "/{job_id}/artifacts/{kind}/file",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file's bytes"},
        404: {"description": "no such job, or the job has no artifact of this kind"},
        409: {"description": "the stored file no longer matches its recorded sha256"},
        410: {"description": "the stored file is gone"},
        502: {"description": "the artifact store could not be read"},
    },
)
def download_artifact(
    job_id: IdPath, kind: ArtifactKind, session: SessionDep, settings: SettingsDep
) -> StreamingResponse:
    """The bytes of one of the job's files (``kind``: ``delta`` for a fine-tuning job's
    checkpoint, ``soup``, ``metrics``, ...), after checking them against the sha256 recorded
    when the file was written (header ``X-Checksum-Sha256``, also the ``ETag``)."""
    job = get_job_or_404(session, job_id)
    found = {a.kind: a for a in crud.get_artifacts(session, job_id=job_id)}
    artifact = found.get(kind)
    if artifact is None:
        has = ", ".join(sorted(found)) or f"none yet (the job is {job.status})"
        raise HTTPException(404, f"job {job_id} has no {kind!r} artifact; it has: {has}")
    what = f"the {kind} file of job {job_id}"
    try:
        f = artifact_files.open_verified(artifact_files.api_store(settings), artifact, what)
    except artifact_files.ArtifactUnavailable as exc:
        raise HTTPException(_UNAVAILABLE.get(type(exc), 409), str(exc)) from None
    name = ArtifactPublic.model_validate(artifact).file_name
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Content-Length": str(artifact_files.file_size(f)),
        "ETag": f'"{artifact.sha256}"',
        "X-Checksum-Sha256": artifact.sha256,
    }
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return StreamingResponse(artifact_files.chunks(f), media_type=media, headers=headers)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={**_NOT_FOUND, 409: {"description": "the job has already finished"}},
)
def cancel_job(job_id: IdPath, session: SessionDep) -> Job:
    """Cancels a queued job at once; a running job stops when its worker next reports."""
    get_job_or_404(session, job_id)
    crud.request_cancel(session, job_id=job_id)
    job = get_job_or_404(session, job_id)
    session.refresh(job)
    return job


@router.post(
    "/{job_id}/retry",
    response_model=JobPublic,
    responses={**_NOT_FOUND, 409: {"description": "the job is not failed or cancelled"}},
)
def retry_job(job_id: IdPath, session: SessionDep, settings: SettingsDep) -> Job:
    """Queues a failed or cancelled job again."""
    get_job_or_404(session, job_id)
    job = crud.reset_for_retry(session, job_id=job_id)
    if enqueue_job(job.id, settings=settings):
        crud.mark_enqueued(session, job_ids=[job.id])
    return job

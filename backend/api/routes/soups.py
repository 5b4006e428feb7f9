"""``/soups``: average succeeded fine-tuning jobs of one base model into a soup.

A soup is identified by its job's id: ``POST /soups`` answers the soup job, ``GET /soups/{id}``
takes that id.
"""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, HTTPException, Response

from backend import crud, idempotency
from backend.api.deps import IdPath, SessionDep, SettingsDep
from backend.db.models import Job
from backend.enqueue import enqueue_jobs
from backend.schemas import SoupCreate
from backend.submit import submit_soup
from contract.api import SoupPublic

router = APIRouter(prefix="/soups", tags=["soups"])


def _public(job: Job) -> SoupPublic:
    soup = job.soup
    return SoupPublic(
        id=job.id,
        job_id=job.id,
        status=job.status,
        method=soup.method,
        ingredients=soup.ingredients,
        shifts=soup.shifts,
        trace=soup.trace,
        score_in=soup.score_in,
        scores_out=soup.scores_out,
        error=job.error,
        mixing=soup.mixing or {},
    )


@router.post("", status_code=201, response_model=SoupPublic)
def create_soup(
    request: SoupCreate,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    response: Response,
    idempotency_key: idempotency.KeyHeader = None,
) -> SoupPublic:
    """A soup job over ``ingredients`` (succeeded fine-tuning jobs of one model and dataset)
    merged by ``method`` (GET /catalog/soups), evaluated on ``shifts``. With an
    ``Idempotency-Key``, a retry of the same request answers the same soup."""
    job, replay = idempotency.submit_once(
        session,
        route="POST /soups",
        key=idempotency_key,
        request=request,
        submit=lambda: submit_soup(session, request),
    )
    if replay is not None:
        response.headers[idempotency.REPLAYED] = "true"
        job = crud.get_job(session, job_id=replay.job_ids[0])
        return _public(job)
    background.add_task(enqueue_jobs, [job.id], settings=settings)
    session.refresh(job)
    return _public(job)


@router.get(
    "/{soup_id}", response_model=SoupPublic, responses={404: {"description": "no such soup"}}
)
def read_soup(soup_id: IdPath, session: SessionDep) -> SoupPublic:
    """The recipe, the greedy trace and the scores in and out of distribution."""
    job = crud.get_job(session, job_id=soup_id)
    if job is None or job.soup is None:
        raise HTTPException(404, f"no soup {soup_id} (soups are identified by their job id)")
    return _public(job)

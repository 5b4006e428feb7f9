"""``/experiments``: strategies x seeds in one submission, summaries and result exports."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Response
from fastapi.responses import PlainTextResponse

from backend import crud, idempotency, results
from backend.api.deps import IdPath, SessionDep, SettingsDep
from backend.db.models import Experiment
from backend.enqueue import enqueue_jobs
from backend.schemas import ExperimentCreate
from backend.submit import submit_experiment
from contract.api import (
    ExperimentCreated,
    ExperimentDetail,
    ExperimentPublic,
    ExperimentsPage,
    JobPublic,
)

router = APIRouter(prefix="/experiments", tags=["experiments"])
_NOT_FOUND = {404: {"description": "no such experiment"}}


def _experiment_or_404(session: SessionDep, experiment_id: int) -> Experiment:
    experiment = crud.get_experiment(session, experiment_id=experiment_id)
    if experiment is None:
        raise HTTPException(404, f"no experiment {experiment_id}")
    return experiment


def _public(experiment: Experiment) -> ExperimentPublic:
    counts = Counter(j.status for j in experiment.jobs)
    return ExperimentPublic.model_validate(experiment).model_copy(
        update={"status_counts": dict(counts)}
    )


@router.post("", status_code=201, response_model=ExperimentCreated)
def create_experiment(
    request: ExperimentCreate,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    response: Response,
    idempotency_key: idempotency.KeyHeader = None,
) -> ExperimentCreated:
    """Creates one fine-tuning job per strategy x seed and queues them all. With an
    ``Idempotency-Key``, a retry of the same request answers the same experiment and jobs."""
    created, replay = idempotency.submit_once(
        session,
        route="POST /experiments",
        key=idempotency_key,
        request=request,
        submit=lambda: submit_experiment(session, request, settings=settings),
    )
    if replay is not None:
        response.headers[idempotency.REPLAYED] = "true"
        experiment = _experiment_or_404(session, replay.experiment_id or 0)
        found = crud.get_jobs(session, job_ids=replay.job_ids)
        jobs = [found[i] for i in replay.job_ids if i in found]
        return ExperimentCreated(
            experiment=_public(experiment), jobs=[JobPublic.model_validate(j) for j in jobs]
        )
    experiment, jobs = created
    background.add_task(enqueue_jobs, [j.id for j in jobs], settings=settings)
    session.refresh(experiment)
    return ExperimentCreated(
        experiment=_public(experiment), jobs=[JobPublic.model_validate(j) for j in jobs]
    )


@router.get("", response_model=ExperimentsPage)
def list_experiments(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> ExperimentsPage:
    items, total = crud.list_experiments(session, limit=limit, offset=offset)
    return ExperimentsPage(
        items=[_public(e) for e in items], total=total, limit=limit, offset=offset
    )


@router.get("/{experiment_id}", response_model=ExperimentDetail, responses=_NOT_FOUND)
def read_experiment(experiment_id: IdPath, session: SessionDep) -> ExperimentDetail:
    """The experiment with a per-strategy summary: accuracy mean and spread over seeds."""
    experiment = _experiment_or_404(session, experiment_id)
    jobs = crud.experiment_jobs(session, experiment_id=experiment_id)
    last = crud.final_metrics(session, job_ids=[j.id for j in jobs])
    return ExperimentDetail(
        **_public(experiment).model_dump(),
        job_ids=[j.id for j in jobs],
        summary=results.summarize(jobs, last),
    )


def _rows(session: SessionDep, experiment_id: int) -> list[dict]:
    _experiment_or_404(session, experiment_id)
    jobs = crud.experiment_jobs(session, experiment_id=experiment_id)
    return results.export_rows(jobs, crud.final_metrics(session, job_ids=[j.id for j in jobs]))


@router.get(
    "/{experiment_id}/results.csv",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/csv": {}}}, **_NOT_FOUND},
)
def results_csv(experiment_id: IdPath, session: SessionDep) -> PlainTextResponse:
    """One row per job: strategy, seed, status, tuned parameters, final metrics."""
    body = results.to_csv(_rows(session, experiment_id))
    return PlainTextResponse(
        body,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}.csv"'},
    )


@router.get("/{experiment_id}/results.json", responses=_NOT_FOUND)
def results_json(experiment_id: IdPath, session: SessionDep) -> dict:
    """The same rows as the CSV, plus the per-strategy summary."""
    rows = _rows(session, experiment_id)
    jobs = crud.experiment_jobs(session, experiment_id=experiment_id)
    last = crud.final_metrics(session, job_ids=[j.id for j in jobs])
    return {"experiment_id": experiment_id, "jobs": rows, "summary": results.summarize(jobs, last)}

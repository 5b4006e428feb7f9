"""``/results``: any set of jobs side by side: several experiments, the loose fine-tuning jobs
(of no experiment) and the soups, grouped by recipe with spreads over seeds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from backend import crud, results
from backend.api.deps import SessionDep
from backend.submit import InvalidRequest
from contract.api import ResultsView

router = APIRouter(prefix="/results", tags=["results"])
_MAX_ID = 2**31 - 1
_WHERE = ("query", "experiments")
MAX_EXPERIMENTS = 200  # experiments in one answer, at most


def _experiment_ids(given: list[str]) -> list[int]:
    """``experiments=1,2`` and ``experiments=1&experiments=2``, in the order given."""
    out: list[int] = []
    for part in (p.strip() for value in given for p in value.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= _MAX_ID:
            raise InvalidRequest(
                _WHERE, f"{part!r} is not an experiment id: give ids such as experiments=1,2"
            )
        if int(part) not in out:
            out.append(int(part))
    if len(out) > MAX_EXPERIMENTS:
        raise InvalidRequest(
            _WHERE, f"{len(out)} experiments; one answer compares at most {MAX_EXPERIMENTS}"
        )
    return out


@router.get("", response_model=ResultsView, responses={404: {"description": "no such experiment"}})
def read_results(
    session: SessionDep,
    experiments: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    loose: bool = False,
    soups: bool = False,
) -> ResultsView:
    """Every job of the ``experiments`` (ids, ``experiments=1,2``), of no experiment
    (``loose=true``: fine-tuning jobs launched on their own) and the soups (``soups=true``),
    grouped by recipe (jobs that differ only by seed): held-out, test and per-shift accuracy as
    mean, sample sd and 95% t-interval over the group's succeeded jobs, with their number."""
    ids = _experiment_ids(experiments)
    if not ids and not loose and not soups:
        raise InvalidRequest(
            _WHERE, "nothing selected: give experiments=1,2 and/or loose=true and/or soups=true"
        )
    for experiment_id in ids:
        if crud.get_experiment(session, experiment_id=experiment_id) is None:
            raise HTTPException(404, f"no experiment {experiment_id}")
    jobs, truncated = results.select_jobs(session, experiment_ids=ids, loose=loose, soups=soups)
    last = crud.final_metrics(session, job_ids=[j.id for j in jobs])
    view = results.results_view(jobs, last)
    return ResultsView(experiments=ids, loose=loose, soups=soups, truncated=truncated, **view)

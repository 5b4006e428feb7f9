"""``/criteria``: how the selection criteria scored on one model and dataset agree.

``GET /criteria/compare`` takes, for each criterion of `pft.criteria.registry`, the newest
succeeded job that scored it on that model and dataset: a ``rank`` job's scores (its result is
`contract.api.RankScores`), or for the criterion that ranks from a reference run (the paper's
fine-tuned angle) the final unit angles of the newest succeeded fine-tuning job that tuned
every unit (`pft.strategies.reference_strategies`). It answers `pft.criteria.compare` over them:
Spearman's rho and the top-K overlap of every pair, and each criterion's cost in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import ValidationError
from sqlalchemy.orm import Session

from backend import crud
from backend.api.deps import SessionDep
from backend.db.models import Job
from contract.api import CriteriaComparison, CriterionScores, RankScores, UnitScore
from contract.vocab import FINAL_EPOCH, AngleScope, JobKind, JobStatus
from pft.criteria.compare import compare
from pft.criteria.registry import CRITERIA
from pft.errors import PftError
from pft.strategies import ORDERS, reference_strategies

router = APIRouter(prefix="/criteria", tags=["criteria"])

PAGE = 500
MAX_PAGES = 20  # the newest 10,000 succeeded jobs of a kind are searched


def _succeeded(session: Session, kind: JobKind, model: str, dataset: str) -> Iterator[Job]:
    """Succeeded jobs of ``kind`` on ``model`` and ``dataset``, newest first."""
    for page in range(MAX_PAGES):
        jobs, _ = crud.list_jobs(
            session, kind=kind, status=JobStatus.SUCCEEDED, limit=PAGE, offset=page * PAGE
        )
        for job in jobs:
            if job.model == model and job.dataset == dataset:
                yield job
        if len(jobs) < PAGE:
            return


def _rank_scores(session: Session, model: str, dataset: str) -> dict[str, CriterionScores]:
    """criterion -> the scores of its newest succeeded rank job."""
    out: dict[str, CriterionScores] = {}
    for job in _succeeded(session, JobKind.RANK, model, dataset):
        criterion = job.config.get("criterion")
        if criterion in out or criterion not in CRITERIA:
            continue
        try:
            scores = RankScores.model_validate(job.result or {})
        except ValidationError:  # a result of another shape: not comparable
            continue
        out[criterion] = CriterionScores(
            criterion=criterion, job_id=job.id, units=scores.units, seconds=scores.seconds
        )
        if len(out) == len(CRITERIA):
            break
    return out


def _angle_scores(
    session: Session, criterion: str, model: str, dataset: str, order: list[str]
) -> CriterionScores | None:
    """The final unit angles of the newest succeeded fine-tuning job that tuned every unit,
    in ``order`` (the rank jobs' depth order; else by block)."""
    references = reference_strategies()
    for job in _succeeded(session, JobKind.FINETUNE, model, dataset):
        if job.strategy not in references:
            continue
        rows = [
            a
            for a in crud.get_angles(session, job_id=job.id)
            if a.epoch == FINAL_EPOCH and a.scope == AngleScope.UNIT and a.group is not None
        ]
        if not rows:
            continue
        place = {name: i for i, name in enumerate(order)}
        rows.sort(key=lambda a: (place.get(a.name, len(place)), a.block or 0, a.name))
        result = job.result or {}
        seconds = result.get("train_seconds")
        if not isinstance(seconds, int | float) and job.started_at and job.finished_at:
            seconds = (job.finished_at - job.started_at).total_seconds()
        return CriterionScores(
            criterion=criterion,
            job_id=job.id,
            units=[UnitScore(name=a.name, group=a.group, score=a.angle_deg) for a in rows],
            seconds=float(seconds or 0.0),
        )
    return None


def _default_k(scored: list[CriterionScores]) -> int:
    """Half the smallest group, at least one (what top-K selection suggests for ``k``)."""
    sizes: dict[str, int] = {}
    for u in scored[0].units if scored else []:
        sizes[u.group] = sizes.get(u.group, 0) + 1
    return max(1, min(sizes.values(), default=2) // 2)


@router.get(
    "/compare",
    response_model=CriteriaComparison,
    responses={422: {"description": "a bad k or order"}},
)
def compare_criteria(
    session: SessionDep,
    model: Annotated[str, Query(min_length=1, max_length=200)],
    dataset: Annotated[str, Query(min_length=1, max_length=200)],
    k: Annotated[
        int | None, Query(ge=1, le=4096, description="default: half the smallest group")
    ] = None,
    order: Annotated[Literal[ORDERS], Query()] = ORDERS[0],  # type: ignore[valid-type]
) -> CriteriaComparison:
    """Every pair of criteria scored on ``model`` and ``dataset`` (the newest succeeded job per
    criterion): Spearman's rho, the share of top-``k`` units per group both select (``order``:
    the largest or smallest scores), and each criterion's seconds. Fewer than two criteria
    scored: no pairs."""
    ranked = _rank_scores(session, model, dataset)
    depth_order = [u.name for s in ranked.values() for u in s.units]
    scored: list[CriterionScores] = []
    for c in CRITERIA.values():
        if c.needs_reference:
            angles = _angle_scores(session, c.name, model, dataset, depth_order)
            if angles is not None:
                scored.append(angles)
        elif c.name in ranked:
            scored.append(ranked[c.name])
    k = k if k is not None else _default_k(scored)
    try:
        out = compare(
            {
                s.criterion: {"units": [u.model_dump() for u in s.units], "seconds": s.seconds}
                for s in scored
            },
            k,
            order,
        )
    except PftError as exc:
        field = getattr(exc, "field", None) or "k"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            [{"loc": ["query", field], "msg": str(exc), "type": "value_error"}],
        ) from None
    return CriteriaComparison(
        model=model,
        dataset=dataset,
        k=k,
        order=order,
        criteria=scored,
        pairs=out["pairs"],
        cost=out["cost"],
    )

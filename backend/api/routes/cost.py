"""``GET /cost``: the cost preview before launch, per strategy the predicted training time and
peak memory of a run on the device kind a ``calibrate`` job measured (`pft.cost.predict`, no
torch); ``GET /cost/jobs/{id}``: a finished fine-tuning job's predicted against measured time.

Predictions come from the newest succeeded ``calibrate`` job of the model on the dataset (its
result holds the calibration and the dataset's split sizes). Without one the answer says so
(``calibrated: false``) and how to get one: ``POST /jobs`` with ``{"kind": "calibrate", "model",
"dataset"}``, or ``pft strategies MODEL --dataset D --epochs E`` on a machine of that kind.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from backend import crud
from backend.api.deps import IdPath, SessionDep
from backend.api.routes.jobs import get_job_or_404
from backend.db.models import Job
from backend.submit import InvalidRequest
from backend.unit_maps import lookup_unit_map
from contract.api import CostComparison, CostPrediction, CostPreview
from contract.vocab import JobKind, JobStatus
from pft.cost.predict import RunShape, predict, predict_strategies
from pft.dataset_catalog import dataset_info
from pft.errors import PftError
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.model_catalog import get_spec
from pft.strategies import resolve_strategy
from pft.units import UnitMap

router = APIRouter(prefix="/cost", tags=["cost"])
_HP = {f.name: f.default for f in fields(Hparams)}
SCAN = 500  # calibrate jobs looked at, newest first


def _check(loc: str, fn: Any, value: str) -> None:
    try:
        fn(value)
    except PftError as exc:
        raise InvalidRequest(("query", loc), str(exc)) from None


def _calibrations(session: Session, model: str, dataset: str) -> tuple[Job | None, Job | None]:
    """The newest succeeded calibrate job of ``model`` on ``dataset`` (no overrides) with a
    readable result, and the newest one still queued or running."""
    done = pending = None
    jobs, _ = crud.list_jobs(session, kind=JobKind.CALIBRATE, limit=SCAN)
    for job in jobs:  # newest first
        if job.model != model or job.dataset != dataset or job.config.get("model_overrides"):
            continue
        if job.status == JobStatus.SUCCEEDED and done is None:
            result = job.result or {}
            if isinstance(result.get("calibration"), dict) and result.get("dataset"):
                done = job
        elif not JobStatus(job.status).terminal and pending is None:
            pending = job
    return done, pending


def _unit_map(session: Session, model: str, num_classes: int) -> UnitMap | None:
    return lookup_unit_map(session, model=model, num_classes=num_classes)


def _run(sizes: dict[str, Any], epochs: int, batch_size: int, augment: bool, cache: bool):
    return RunShape(
        train_images=int(sizes["train"]),
        eval_images=int(sizes["heldout"]) + int(sizes["test"]),
        epochs=epochs,
        batch_size=batch_size,
        augment=augment,
        prefix_cache=cache,
    )


def _how(model: str, dataset: str) -> str:
    return (
        f"no calibration of {model} on {dataset} yet: queue one with POST /jobs "
        f'{{"kind": "calibrate", "model": "{model}", "dataset": "{dataset}"}} (the dashboard\'s '
        f"Calibrate button), or run `pft strategies {model} --dataset {dataset} --epochs E` "
        "on a machine of the device kind"
    )


@router.get("", response_model=CostPreview)
def cost(
    session: SessionDep,
    model: Annotated[str, Query(max_length=200, description="GET /catalog/models")],
    dataset: Annotated[str, Query(max_length=200, description="GET /catalog/datasets")],
    epochs: Annotated[int, Query(ge=1, le=1000)] = _HP["epochs"],
    batch_size: Annotated[int, Query(ge=1, le=4096)] = _HP["batch_size"],
    augment: bool = _HP["augment"],
    prefix_cache: bool = _HP["prefix_cache"],
) -> CostPreview:
    """Per strategy (those `pft strategies` lists), the predicted seconds and peak memory of
    the run on the calibrated device kind; ``calibrated: false`` and a ``message`` saying how
    to calibrate when no calibrate job of this model and dataset has succeeded."""
    _check("model", get_spec, model)
    _check("dataset", dataset_info, dataset)
    answer = CostPreview(
        model=model,
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        augment=augment,
        prefix_cache=prefix_cache,
        calibrated=False,
    )
    done, pending = _calibrations(session, model, dataset)
    answer.pending_job = pending.id if pending is not None else None
    if done is None:
        answer.message = _how(model, dataset)
        if pending is not None:
            answer.message = f"calibrate job {pending.id} is {pending.status}; " + answer.message
        return answer
    cal, sizes = done.result["calibration"], done.result["dataset"]
    um = _unit_map(session, model, int(sizes["num_classes"]))
    if um is None:
        answer.message = f"no unit map for {model} yet (a worker shares it after its first job)"
        return answer
    run = _run(sizes, epochs, batch_size, augment, prefix_cache)
    try:
        rows = predict_strategies(cal, um, run)
    except PftError as exc:
        answer.message = f"calibrate job {done.id}: {exc}"
        return answer
    answer.calibrated = True
    answer.device_kind = str(cal.get("device_kind"))
    answer.calibration_job = done.id
    answer.train_images, answer.eval_images = run.train_images, run.eval_images
    answer.strategies = [CostPrediction.model_validate(r) for r in rows]
    return answer


def measured_seconds(result: dict[str, Any] | None) -> float | None:
    """A finished fine-tuning run's training time: its steps plus its one-time prefix pass."""
    if not result or not isinstance(result.get("train_seconds"), int | float):
        return None
    cache = result.get("prefix_cache") or {}
    return float(result["train_seconds"]) + float(cache.get("seconds") or 0.0)


@router.get(
    "/jobs/{job_id}", response_model=CostComparison, responses={404: {"description": "no such job"}}
)
def job_cost(job_id: IdPath, session: SessionDep) -> CostComparison:
    """A fine-tuning job's predicted training time (``train_seconds + prefix_seconds``, from
    the newest calibration of its model and dataset) against what it measured."""
    job = get_job_or_404(session, job_id)
    out = CostComparison(job_id=job.id, strategy=job.strategy)
    if job.kind != JobKind.FINETUNE:
        out.message = f"job {job.id} is a {job.kind} job; costs are predicted for fine-tuning"
        return out
    out.measured_seconds = measured_seconds(job.result)
    spec = FinetuneSpec.from_dict(job.config)
    done, _ = _calibrations(session, spec.model, spec.dataset)
    if done is None or spec.model_overrides:
        out.message = _how(spec.model, spec.dataset)
        return out
    cal, sizes = done.result["calibration"], done.result["dataset"]
    um = _unit_map(session, spec.model, int(sizes["num_classes"]))
    if um is None:
        out.message = f"no unit map for {spec.model} yet"
        return out
    h = spec.hparams
    run = _run(sizes, h.epochs, h.batch_size, h.augment, h.prefix_cache)
    try:
        sel = resolve_strategy(um, spec.strategy, **spec.strategy_params)
        p = predict(cal, um, spec.strategy, sel.tensors, run).to_dict()
    except PftError as exc:
        out.message = f"cannot predict job {job.id}: {exc}"
        return out
    out.predicted = CostPrediction.model_validate(p | {"tuned_params": sel.tuned_params})
    return out

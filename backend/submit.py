"""Turning validated requests into queued jobs: the checks that need the database or a unit
map, then one transaction for all rows. The caller then sends the jobs to the broker
(`backend.enqueue.enqueue_jobs`; the API does it right after answering).

No HTTP here: a user mistake raises `InvalidRequest` naming the request field (``loc``) and the
accepted values; the API turns it into a 422. Nothing is written when a check fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from backend import crud
from backend.db.models import Experiment, Job, utcnow
from backend.schemas import (
    ExperimentCreate,
    FinetuneCreate,
    PretrainCreate,
    SoupCreate,
    StrategyCreate,
)
from backend.unit_maps import lookup_unit_map
from pft.dataset_catalog import dataset_info
from pft.errors import PftError
from pft.model_catalog import BUILTIN_BACKBONE
from pft.strategies import STRATEGIES, resolve_strategy

Loc = tuple[str | int, ...]


class InvalidRequest(ValueError):
    """A request that is well-formed but not acceptable; ``loc`` is the offending field."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _run_identity(job: Job) -> tuple:
    c = job.config
    overrides = c.get("model_overrides") or {}
    return (c.get("model"), c.get("dataset"), c.get("pretrained", True), overrides)


def _reference_angles(
    session: Session, req: FinetuneCreate | ExperimentCreate, ref_id: int, loc: Loc
) -> dict[str, float]:
    """Final unit angles of the reference job, after checking it is a usable one."""
    ref = crud.get_job(session, job_id=ref_id)
    rule = (
        "reference_job must be a succeeded full fine-tuning job of the same model "
        f"({req.model}) and dataset ({req.dataset})"
    )
    if ref is None:
        raise InvalidRequest(loc, f"job {ref_id} does not exist; {rule}")
    if ref.kind != "finetune" or ref.strategy != "full":
        what = f"a {ref.kind} job" + (f" with strategy {ref.strategy}" if ref.strategy else "")
        raise InvalidRequest(loc, f"job {ref_id} is {what}; {rule}")
    if ref.status != "succeeded":
        raise InvalidRequest(loc, f"job {ref_id} is {ref.status}; {rule}")
    mine = (req.model, req.dataset, req.pretrained, req.model_overrides)
    if _run_identity(ref) != mine:
        raise InvalidRequest(loc, f"job {ref_id} fine-tuned {ref.model} on {ref.dataset}; {rule}")
    angles = crud.final_unit_angles(session, job_id=ref_id)
    if not angles:
        raise InvalidRequest(loc, f"job {ref_id} has no recorded final angles; {rule}")
    return angles


def _strategy_plan(
    session: Session, req: FinetuneCreate | ExperimentCreate, spec: StrategyCreate, loc: Loc
) -> dict[str, Any]:
    """Validates one strategy for the request's model; returns job fields (no seed yet)."""
    strategy = STRATEGIES[spec.name]
    params = spec.params()
    accepted = [p.name for p in strategy.params if p.kind != "angles"]
    for key in params:
        if key not in accepted:
            names = ", ".join(accepted) or "none"
            raise InvalidRequest(
                (*loc, key), f"strategy {spec.name!r} takes no parameter {key!r}; accepted: {names}"
            )
    if spec.name == "angle_topk":
        if spec.k is None:
            raise InvalidRequest((*loc, "k"), "angle_topk needs k (units tuned per group)")
        if spec.reference_job is None:
            raise InvalidRequest(
                (*loc, "reference_job"),
                "angle_topk needs reference_job: a succeeded full fine-tuning job of the same "
                "model and dataset, whose angles rank the units",
            )
        params["angles"] = _reference_angles(
            session, req, spec.reference_job, (*loc, "reference_job")
        )
    elif spec.reference_job is not None:
        raise InvalidRequest(
            (*loc, "reference_job"), "reference_job is only accepted by strategy angle_topk"
        )
    if spec.name == "custom" and not spec.units:
        raise InvalidRequest((*loc, "units"), "custom needs units, e.g. ['ATTN.0', 'FFN.3']")

    num_classes = dataset_info(req.dataset).num_classes
    um = lookup_unit_map(
        session, model=req.model, num_classes=num_classes or 1, overrides=req.model_overrides
    )
    tuned = total = None
    if um is None:
        if spec.name in ("angle_topk", "custom"):
            raise InvalidRequest(
                ("body", "model"),
                f"no shape table for {req.model!r} yet, so {spec.name} cannot be checked; "
                "run any other strategy on it first (or `pft units MODEL`)",
            )
    else:
        try:
            selection = resolve_strategy(um, spec.name, **params)
        except PftError as exc:
            raise InvalidRequest(loc, str(exc)) from None
        params = selection.params
        if num_classes is not None:  # image folders: head size known once the folder is read
            tuned, total = selection.tuned_params, selection.total_params
    strategy_config = {"name": spec.name, **params}
    if spec.reference_job is not None:
        strategy_config["reference_job"] = spec.reference_job
    return {"strategy": strategy_config, "tuned_params": tuned, "total_params": total}


def _finetune_job(
    session: Session,
    req: FinetuneCreate | ExperimentCreate,
    plan: dict[str, Any],
    *,
    seed: int,
    experiment_id: int | None = None,
) -> Job:
    hparams = {**req.hparams.model_dump(), "seed": seed}
    config = {
        "model": req.model,
        "model_overrides": dict(req.model_overrides),
        "pretrained": req.pretrained,
        "dataset": req.dataset,
        "strategy": plan["strategy"],
        "hparams": hparams,
        "shifts": list(req.shifts),
    }
    return crud.create_job(
        session,
        kind="finetune",
        config=config,
        experiment_id=experiment_id,
        model=req.model,
        dataset=req.dataset,
        strategy=plan["strategy"]["name"],
        seed=seed,
        tuned_params=plan["tuned_params"],
        total_params=plan["total_params"],
    )


def _commit(session: Session, jobs: Sequence[Job]) -> None:
    """Writes the request's rows at once, stamped as enqueued now: the caller sends them right
    after (see `enqueue_jobs`); if that send fails, the reconciler sends them after the grace
    period."""
    now = utcnow()
    for job in jobs:
        job.enqueued_at = now
    session.commit()


def submit_finetune(session: Session, req: FinetuneCreate) -> Job:
    plan = _strategy_plan(session, req, req.strategy, ("body", "strategy"))
    job = _finetune_job(session, req, plan, seed=req.hparams.seed)
    _commit(session, [job])
    return job


def submit_pretrain(session: Session, req: PretrainCreate) -> Job:
    config: dict[str, Any] = {"model": BUILTIN_BACKBONE}
    if req.epochs is not None:
        config["epochs"] = req.epochs
    job = crud.create_job(session, kind="pretrain", config=config, model=BUILTIN_BACKBONE)
    _commit(session, [job])
    return job


def _head_seed(job: Job) -> int:
    return int(((job.config or {}).get("hparams") or {}).get("head_seed", 0))


def submit_soup(session: Session, req: SoupCreate) -> Job:
    """A soup job over succeeded fine-tuning jobs of one base model and dataset."""
    found = crud.get_jobs(session, job_ids=req.ingredients)
    first: Job | None = None
    for i, job_id in enumerate(req.ingredients):
        loc = ("body", "ingredients", i)
        job = found.get(job_id)
        if job is None:
            raise InvalidRequest(loc, f"job {job_id} does not exist")
        if job.kind != "finetune":
            raise InvalidRequest(
                loc, f"job {job_id} is a {job.kind} job; soups take fine-tuning jobs"
            )
        if job.status != "succeeded":
            raise InvalidRequest(
                loc, f"job {job_id} is {job.status}; soups take succeeded fine-tuning jobs only"
            )
        if first is None:
            first = job
        elif _run_identity(job) != _run_identity(first):
            raise InvalidRequest(
                loc,
                f"job {job_id} fine-tuned {job.model} on {job.dataset} but job {first.id} "
                f"fine-tuned {first.model} on {first.dataset}; all ingredients must share the "
                "base model (and its overrides) and the dataset",
            )
        elif _head_seed(job) != _head_seed(first):
            raise InvalidRequest(
                loc,
                f"job {job_id} initialised its head with head_seed {_head_seed(job)} but job "
                f"{first.id} with {_head_seed(first)}; soup ingredients must share their head "
                "initialisation (Wortsman et al. 2022)",
            )
    assert first is not None  # at least two ingredients (schema)
    config = {"ingredients": list(req.ingredients), "method": req.method, "shifts": req.shifts}
    job = crud.create_job(
        session, kind="soup", config=config, model=first.model, dataset=first.dataset
    )
    crud.create_soup(
        session, job_id=job.id, method=req.method, ingredients=req.ingredients, shifts=req.shifts
    )
    _commit(session, [job])
    return job


def submit_experiment(session: Session, req: ExperimentCreate) -> tuple[Experiment, list[Job]]:
    """One fine-tuning job per strategy x seed, all written in one transaction."""
    plans = [
        _strategy_plan(session, req, spec, ("body", "strategies", i))
        for i, spec in enumerate(req.strategies)
    ]
    experiment = crud.create_experiment(
        session,
        name=req.name or f"{req.model} on {req.dataset}",
        model=req.model,
        dataset=req.dataset,
        hparams=req.hparams.model_dump(),
        config=req.model_dump(mode="json"),
    )
    jobs = [
        _finetune_job(session, req, plan, seed=seed, experiment_id=experiment.id)
        for plan in plans
        for seed in req.seeds
    ]
    _commit(session, jobs)
    return experiment, jobs

"""Turning validated requests into queued jobs: the checks that need the database, a unit map
or the data folder, then one transaction for all rows. The caller then sends the jobs to the
broker (`backend.enqueue.enqueue_jobs`; the API does it right after answering).

Each job's config is its spec (`pft.jobs.specs`), built here once and stored verbatim:
the strategy is resolved at submission (defaults filled, units in depth order, a reference
job's final unit angles filled in by `pft.strategies.prepare_params`), so the worker runs
exactly what was accepted.

A fine-tuning run whose estimated peak training memory (`pft.cost.memory`) exceeds what one
job may use is refused before anything is queued (`check_fits`).

No HTTP here: a user mistake raises `InvalidRequest` naming the request field (``loc``) and the
accepted values; the API turns it into a 422. Nothing is written when a check fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from backend import crud, idempotency
from backend.core.config import ApiSettings
from backend.db.models import Experiment, Job, utcnow
from backend.schemas import (
    CalibrateCreate,
    ExperimentCreate,
    FinetuneCreate,
    PretrainCreate,
    RankCreate,
    RunCreate,
    SoupCreate,
    StrategyCreate,
)
from backend.unit_maps import lookup_unit_map
from contract.vocab import JobKind, JobStatus
from pft.cost.memory import estimate, host_memory_mb, vit_dims, with_overrides
from pft.cost.predict import tuned_layout
from pft.criteria.registry import get_job_criterion
from pft.dataset_catalog import IMAGEFOLDER_PREFIX, dataset_info
from pft.errors import PftError
from pft.jobs.specs import (
    CalibrateSpec,
    FinetuneSpec,
    Hparams,
    PretrainSpec,
    RankSpec,
    SoupSpec,
)
from pft.model_catalog import BUILTIN_BACKBONE, get_spec
from pft.paths import contained
from pft.soups.registry import get_method
from pft.strategies import (
    StrategyParam,
    get_strategy,
    prepare_params,
    reference_strategies,
    resolve_strategy,
)
from pft.units import UnitMap

Loc = tuple[str | int, ...]


class InvalidRequest(ValueError):
    """A request that is well-formed but not acceptable; ``loc`` is the offending field."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass
class StrategyPlan:
    """One strategy resolved for one run: what its jobs store."""

    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    tuned_params: int | None = None  # None: no shape table, or an image folder's head
    total_params: int | None = None


def _identity(spec: FinetuneSpec) -> tuple:
    return (spec.model, spec.dataset, spec.pretrained, spec.model_overrides)


def _request_identity(run: RunCreate) -> tuple:
    return (run.model, run.dataset, run.pretrained, dict(run.model_overrides))


def finetune_spec(job: Job) -> FinetuneSpec:
    return FinetuneSpec.from_dict(job.config)


def check_dataset(run: RunCreate, settings: ApiSettings) -> None:
    """An image folder must lie below the datasets root, nowhere else."""
    if run.dataset.startswith(IMAGEFOLDER_PREFIX):
        try:
            contained(settings.resolved_datasets_dir, run.dataset[len(IMAGEFOLDER_PREFIX) :])
        except PftError as exc:
            raise InvalidRequest(("body", "dataset"), str(exc)) from None
        except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
            raise InvalidRequest(
                ("body", "dataset"),
                f"dataset folder {run.dataset[len(IMAGEFOLDER_PREFIX) :]!r} cannot be resolved "
                f"below the datasets root ({exc.__class__.__name__}: {exc}); a symlink loop?",
            ) from None


def _reference_angles(session: Session, run: RunCreate, ref_id: int, loc: Loc) -> dict[str, float]:
    """Final unit angles of a reference job, after checking it is a usable one."""
    ref = crud.get_job(session, job_id=ref_id)
    rule = (
        "the reference job must be a succeeded full fine-tuning job of the same model "
        f"({run.model}) and dataset ({run.dataset})"
    )
    if ref is None:
        raise InvalidRequest(loc, f"job {ref_id} does not exist; {rule}")
    if ref.kind != JobKind.FINETUNE or ref.strategy not in reference_strategies():
        what = f"a {ref.kind} job" + (f" with strategy {ref.strategy}" if ref.strategy else "")
        raise InvalidRequest(loc, f"job {ref_id} is {what}; {rule}")
    if ref.status != JobStatus.SUCCEEDED:
        raise InvalidRequest(loc, f"job {ref_id} is {ref.status}; {rule}")
    if _identity(finetune_spec(ref)) != _request_identity(run):
        raise InvalidRequest(loc, f"job {ref_id} fine-tuned {ref.model} on {ref.dataset}; {rule}")
    angles = crud.final_unit_angles(session, job_id=ref_id)
    if not angles:
        raise InvalidRequest(loc, f"job {ref_id} has no recorded final angles; {rule}")
    return angles


def reference_filler(
    session: Session, run: RunCreate, loc: Loc
) -> Callable[[StrategyParam, Any], Any]:
    """The hook `prepare_params` calls for a parameter the lab fills: a job id becomes that
    job's final per-unit angles."""

    def fill(param: StrategyParam, value: Any) -> Any:
        return _reference_angles(session, run, int(value), (*loc, param.name))

    return fill


def param_loc(name: str, exc: PftError, loc: Loc) -> Loc:
    """Where a strategy's PftError points in the request: its parameter, or the public one
    that fills it (``angles`` -> ``reference_job``), else the strategy itself."""
    target = getattr(exc, "field", None)
    if target is None:
        return loc
    for p in get_strategy(name).params:
        if p.public and p.fills == target:
            return (*loc, p.name)
    return (*loc, target)


def run_unit_map(session: Session, run: RunCreate) -> tuple[UnitMap | None, int | None]:
    """The run's unit map (None without a shape table) and its class count (None: a folder)."""
    num_classes = dataset_info(run.dataset).num_classes
    um = lookup_unit_map(
        session, model=run.model, num_classes=num_classes or 1, overrides=run.model_overrides
    )
    return um, num_classes


def plan_strategy(session: Session, run: RunCreate, spec: StrategyCreate, loc: Loc) -> StrategyPlan:
    """Validates and resolves one strategy for the run's model."""
    name = spec.name
    try:
        params = prepare_params(name, spec.params(), fill=reference_filler(session, run, loc))
    except PftError as exc:
        raise InvalidRequest(param_loc(name, exc, loc), str(exc)) from None
    um, num_classes = run_unit_map(session, run)
    if um is None:
        if get_strategy(name).params:
            raise InvalidRequest(
                ("body", "model"),
                f"no shape table for {run.model!r} yet, so the parameters of {name} cannot be "
                "checked; run a strategy without parameters on it first (or `pft units MODEL`)",
            )
        return StrategyPlan(name, params)
    try:
        selection = resolve_strategy(um, name, **params)
    except PftError as exc:
        raise InvalidRequest(param_loc(name, exc, loc), str(exc)) from None
    plan = StrategyPlan(name, dict(selection.params))
    if num_classes is not None:  # image folders: head size known once the folder is read
        plan.tuned_params, plan.total_params = selection.tuned_params, selection.total_params
    return plan


def _finetune_job(
    session: Session,
    req: FinetuneCreate | ExperimentCreate,
    plan: StrategyPlan,
    *,
    seed: int,
    experiment_id: int | None = None,
) -> Job:
    spec = FinetuneSpec(
        model=req.model,
        dataset=req.dataset,
        strategy=plan.strategy,
        strategy_params=plan.params,
        hparams=Hparams(**{**req.hparams.model_dump(), "seed": seed}),
        pretrained=req.pretrained,
        model_overrides=dict(req.model_overrides),
        shifts=list(req.shifts),
    )
    return crud.create_job(
        session,
        kind=spec.kind,
        config=spec.to_dict(),
        experiment_id=experiment_id,
        model=spec.model,
        dataset=spec.dataset,
        strategy=spec.strategy,
        seed=seed,
        tuned_params=plan.tuned_params,
        total_params=plan.total_params,
    )


def _commit(session: Session, jobs: Sequence[Job], experiment: Experiment | None = None) -> None:
    """Writes the request's rows at once, stamped as enqueued now: the caller sends them right
    after (see `enqueue_jobs`); if that send fails, the reconciler sends them after the grace
    period. An armed idempotency key (`backend.idempotency.begin`) is written with them."""
    now = utcnow()
    for job in jobs:
        job.enqueued_at = now
    session.flush()
    idempotency.stage(
        session,
        job_ids=[j.id for j in jobs],
        experiment_id=experiment.id if experiment is not None else None,
    )
    session.commit()


def memory_limit_mb(session: Session, settings: ApiSettings) -> tuple[float | None, str]:
    """The most memory one job may use and where that figure comes from: the setting, else
    the largest device memory a succeeded calibrate job reported, else this host's."""
    if settings.job_memory_mb is not None:
        return settings.job_memory_mb, "PFT_JOB_MEMORY_MB"
    jobs, _ = crud.list_jobs(session, kind=JobKind.CALIBRATE, status=JobStatus.SUCCEEDED, limit=500)
    reported = [
        float(mb)
        for j in jobs
        if isinstance(
            mb := ((j.result or {}).get("calibration") or {}).get("device_memory_mb"), int | float
        )
    ]
    if reported:
        return max(reported), "the largest device memory a calibrate job reported"
    return host_memory_mb(), "the API host's memory"


def check_fits(
    session: Session,
    req: RunCreate,
    plan: StrategyPlan,
    batch_size: int,
    settings: ApiSettings,
) -> None:
    """Refuses a run whose estimated peak training memory (`pft.cost.memory`) exceeds what
    one job may use, naming the field to change: the batch size, or the model (overrides)."""
    classes = dataset_info(req.dataset).num_classes or 1
    um = lookup_unit_map(session, model=req.model, num_classes=classes)  # without the overrides
    dims = vit_dims(um) if um is not None else None
    if dims is None:  # another family, or no shape table yet: nothing to estimate from
        return
    try:
        selection = resolve_strategy(um, plan.strategy, **plan.params)
    except PftError:
        return  # the run's own unit map accepted it; its share on the base model is a guess
    first, _, _ = tuned_layout(um, selection.tensors)
    if req.model_overrides:
        dims = with_overrides(dims, get_spec(req.model).overrides, req.model_overrides)
    limit, source = memory_limit_mb(session, settings)
    if limit is None:
        return
    est = estimate(
        dims,
        tuned_fraction=selection.tuned_fraction,
        trained_blocks_fraction=(um.depth - first) / max(um.depth, 1),
        batch_size=batch_size,
    )
    if est.peak_mb <= limit:
        return
    largest = est.largest_batch(limit)
    what = f"estimated peak training memory {est.describe()} exceeds {limit:,.0f} MB ({source})"
    if largest >= 1:
        raise InvalidRequest(
            ("body", "hparams", "batch_size"),
            f"{what}; the largest batch_size that fits is about {largest}",
        )
    field_, change = (
        ("model_overrides", "smaller model_overrides (img_size, depth, embed_dim)")
        if req.model_overrides
        else ("model", "a smaller model")
    )
    raise InvalidRequest(("body", field_), f"{what} even at batch 1; choose {change}")


def submit_finetune(session: Session, req: FinetuneCreate, *, settings: ApiSettings) -> Job:
    check_dataset(req, settings)
    plan = plan_strategy(session, req, req.strategy, ("body", "strategy"))
    check_fits(session, req, plan, req.hparams.batch_size, settings)
    job = _finetune_job(session, req, plan, seed=req.hparams.seed)
    _commit(session, [job])
    return job


def submit_pretrain(session: Session, req: PretrainCreate) -> Job:
    spec = PretrainSpec(epochs=req.epochs)
    job = crud.create_job(session, kind=spec.kind, config=spec.to_dict(), model=BUILTIN_BACKBONE)
    _commit(session, [job])
    return job


def submit_rank(session: Session, req: RankCreate, *, settings: ApiSettings) -> Job:
    """A rank job: the criterion's parameters checked and resolved by its registry entry
    (defaults filled in), stored in the spec."""
    check_dataset(req, settings)
    criterion = get_job_criterion(req.criterion)  # the schema refused any other
    try:
        params = criterion.validate(req.params())
    except PftError as exc:
        field = getattr(exc, "field", None)
        raise InvalidRequest(("body", *([field] if field else [])), str(exc)) from None
    spec = RankSpec(
        model=req.model,
        dataset=req.dataset,
        criterion=criterion.name,
        params=params,
        seed=req.seed,
        pretrained=req.pretrained,
        model_overrides=dict(req.model_overrides),
    )
    job = crud.create_job(
        session,
        kind=spec.kind,
        config=spec.to_dict(),
        model=spec.model,
        dataset=spec.dataset,
        seed=spec.seed,
    )
    _commit(session, [job])
    return job


def submit_calibrate(session: Session, req: CalibrateCreate, *, settings: ApiSettings) -> Job:
    """A calibration job of the cost preview (`pft.cost`): its result is what ``GET /cost``
    predicts from."""
    check_dataset(req, settings)
    spec = CalibrateSpec(
        model=req.model,
        dataset=req.dataset,
        pretrained=req.pretrained,
        model_overrides=dict(req.model_overrides),
        batch_size=req.batch_size,
        steps=req.steps,
    )
    job = crud.create_job(
        session, kind=spec.kind, config=spec.to_dict(), model=spec.model, dataset=spec.dataset
    )
    _commit(session, [job])
    return job


def _check_ingredients(session: Session, ingredients: Sequence[int]) -> Job:
    """Every ingredient is a succeeded fine-tuning job of one start; returns the first."""
    found = crud.get_jobs(session, job_ids=ingredients)
    first: Job | None = None
    for i, job_id in enumerate(ingredients):
        loc = ("body", "ingredients", i)
        job = found.get(job_id)
        if job is None:
            raise InvalidRequest(loc, f"job {job_id} does not exist")
        if job.kind != JobKind.FINETUNE:
            raise InvalidRequest(
                loc, f"job {job_id} is a {job.kind} job; soups take fine-tuning jobs"
            )
        if job.status != JobStatus.SUCCEEDED:
            raise InvalidRequest(
                loc, f"job {job_id} is {job.status}; soups take succeeded fine-tuning jobs only"
            )
        if first is None:
            first = job
            continue
        mine, theirs = finetune_spec(job), finetune_spec(first)
        if _identity(mine) != _identity(theirs):
            raise InvalidRequest(
                loc,
                f"job {job_id} fine-tuned {job.model} on {job.dataset} but job {first.id} "
                f"fine-tuned {first.model} on {first.dataset}; all ingredients must share the "
                "base model (and its overrides) and the dataset",
            )
        if mine.hparams.head_seed != theirs.hparams.head_seed:
            raise InvalidRequest(
                loc,
                f"job {job_id} initialised its head with head_seed {mine.hparams.head_seed} but "
                f"job {first.id} with {theirs.hparams.head_seed}; soup ingredients must share "
                "their head initialisation (Wortsman et al. 2022)",
            )
    assert first is not None  # at least two ingredients (schema)
    return first


def _method_params(req: SoupCreate) -> dict[str, Any]:
    try:
        return get_method(req.method).validate(req.params)
    except PftError as exc:
        field = getattr(exc, "field", None)
        raise InvalidRequest(("body", "params", *([field] if field else [])), str(exc)) from None


def submit_soup(session: Session, req: SoupCreate) -> Job:
    """A soup job over succeeded fine-tuning jobs of one base model and dataset."""
    params = _method_params(req)
    first = _check_ingredients(session, req.ingredients)
    spec = SoupSpec(
        method=req.method,
        ingredients=list(req.ingredients),
        params=params,
        shifts=list(req.shifts),
    )
    job = crud.create_job(
        session, kind=spec.kind, config=spec.to_dict(), model=first.model, dataset=first.dataset
    )
    crud.create_soup(
        session, job_id=job.id, method=spec.method, ingredients=spec.ingredients, shifts=spec.shifts
    )
    _commit(session, [job])
    return job


def submit_experiment(
    session: Session, req: ExperimentCreate, *, settings: ApiSettings
) -> tuple[Experiment, list[Job]]:
    """One fine-tuning job per strategy x seed, all written in one transaction."""
    count, cap = len(req.strategies) * len(req.seeds), settings.max_jobs_per_experiment
    if count > cap:
        raise InvalidRequest(
            ("body", "seeds"),
            f"strategies x seeds = {len(req.strategies)} x {len(req.seeds)} = {count} jobs; one "
            f"experiment holds at most {cap} (PFT_MAX_JOBS_PER_EXPERIMENT): send fewer "
            "strategies or seeds, or split the experiment",
        )
    check_dataset(req, settings)
    plans = [
        plan_strategy(session, req, spec, ("body", "strategies", i))
        for i, spec in enumerate(req.strategies)
    ]
    for plan in plans:
        check_fits(session, req, plan, req.hparams.batch_size, settings)
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
    _commit(session, jobs, experiment)
    return experiment, jobs

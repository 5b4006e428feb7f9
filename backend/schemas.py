"""Request bodies of the HTTP API (pydantic), ``<Thing>Create``; the responses are the shared
models of `contract.api`.

The strategy and soup bodies are derived from the registries (`pft.strategies`,
`pft.soups.registry`): a strategy's public parameters become typed optional fields, so adding a
strategy or a parameter changes no code here. Field validators check names against the
torch-free catalogues (models, datasets, shifts, strategies) so a bad name is a 422 naming the
field and the accepted values. Checks that need the database, a unit map or the data folder
(reference jobs, soup ingredients, a parameter's range on one model, image-folder paths) live
in `backend.submit`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    Tag,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from contract.vocab import JobKind
from pft.criteria.registry import CRITERIA, get_job_criterion, job_criteria
from pft.dataset_catalog import dataset_info, parse_shift
from pft.jobs.specs import CalibrateSpec, Hparams, RankSpec
from pft.model_catalog import ALLOWED_OVERRIDES, check_overrides, get_spec
from pft.soups.registry import DEFAULT_METHOD, MERGE_METHODS
from pft.strategies import DEFAULT_STRATEGY, STRATEGIES, get_strategy

MAX_STRATEGIES = 64
MAX_SEEDS = 32
MAX_SHIFTS = 16
MAX_INGREDIENTS = 32
MAX_ID = 2**31 - 1
_HP = {f.name: f.default for f in fields(Hparams)}  # defaults: pft.jobs.specs.Hparams
_RANK = {f.name: f.default for f in fields(RankSpec)}  # defaults: pft.jobs.specs.RankSpec
_CAL = {f.name: f.default for f in fields(CalibrateSpec)}  # pft.jobs.specs.CalibrateSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check(fn: Any, value: Any) -> Any:
    """Runs a pft validator; its PftError (a ValueError) becomes the field's 422 message."""
    fn(value)
    return value


class HparamsCreate(_Strict):
    """Training hyperparameters (`pft.jobs.specs.Hparams`); every field is optional."""

    epochs: StrictInt = Field(_HP["epochs"], ge=1, le=1000, description="passes over the data")
    lr: float = Field(_HP["lr"], gt=0, le=1, description="peak learning rate (AdamW)")
    batch_size: StrictInt = Field(_HP["batch_size"], ge=1, le=4096, description="images per step")
    weight_decay: float = Field(_HP["weight_decay"], ge=0, le=1, description="AdamW decay")
    warmup_fraction: float = Field(
        _HP["warmup_fraction"], ge=0, lt=1, description="share of steps of linear warm-up"
    )
    label_smoothing: float = Field(_HP["label_smoothing"], ge=0, lt=1, description="of targets")
    clip_grad: float = Field(_HP["clip_grad"], ge=0, le=1e6, description="gradient norm cap")
    seed: StrictInt = Field(
        _HP["seed"], ge=0, le=MAX_ID, description="data order, augmentation and dropout"
    )
    head_seed: StrictInt = Field(
        _HP["head_seed"], ge=0, le=MAX_ID, description="new head's initialisation (soups share it)"
    )
    compile: bool = Field(_HP["compile"], description="torch.compile the model (CUDA only)")
    augment: bool = Field(
        _HP["augment"], description="random translation (and flips) of every training batch"
    )
    prefix_cache: bool = Field(
        _HP["prefix_cache"],
        description="train on cached frozen-prefix tokens when valid (augmentation off)",
    )
    prefix_cache_mb: StrictInt = Field(
        _HP["prefix_cache_mb"], ge=1, le=1_000_000, description="memory budget of that cache, MB"
    )


# ---------------------------------------------------------------------------------------------
# strategies: one optional field per public parameter name of the registry


def _bounds(params: list[Any], default_low: float, default_high: float) -> dict[str, float]:
    lows = [p.minimum for p in params]
    highs = [p.maximum for p in params]
    low = default_low if None in lows else min(lows)
    high = default_high if None in highs else max(highs)
    return {"ge": max(low, default_low), "le": min(high, default_high)}


def _annotation(params: list[Any]) -> Any:
    """The request type of a parameter name (the same name in several strategies: the widest
    type; each strategy checks its own range when it resolves)."""
    kinds = {p.kind for p in params}
    kind = kinds.pop() if len(kinds) == 1 else None
    if kind == "int":
        return Annotated[StrictInt, Field(**_bounds(params, -MAX_ID, MAX_ID))]
    if kind == "float":
        return Annotated[float, Field(allow_inf_nan=False, **_bounds(params, -1e12, 1e12))]
    if kind == "choice":
        choices = tuple(dict.fromkeys(c for p in params for c in p.choices))
        return Literal[choices]
    if kind == "units":
        return Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=512)]
    if kind == "job":
        return Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
    return Any


def _strategy_fields() -> dict[str, tuple[Any, FieldInfo]]:
    return _param_fields((s.name, s.params) for s in STRATEGIES.values())


def _param_fields(owners: Iterable[tuple[str, Iterable[Any]]]) -> dict[str, tuple[Any, FieldInfo]]:
    """One optional typed field per public parameter name of ``(owner, params)`` pairs (the
    entries of a registry: strategies, criteria)."""
    by_name: dict[str, list[tuple[str, Any]]] = {}
    for owner, params in owners:
        for p in params:
            if p.public:
                by_name.setdefault(p.name, []).append((owner, p))
    out = {}
    for name, owners in by_name.items():
        help_ = "; ".join(f"{s}: {p.description}" for s, p in owners)
        out[name] = (_annotation([p for _, p in owners]) | None, Field(None, description=help_))
    return out


class _StrategyBase(_Strict):
    name: str = Field(max_length=64, description="one of GET /catalog/strategies")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        _check(get_strategy, v)
        return v

    def params(self) -> dict[str, Any]:
        """The strategy parameters that were given (everything but the name)."""
        return self.model_dump(exclude_none=True, exclude={"name"})


StrategyCreate = create_model(
    "StrategyCreate",
    __base__=_StrategyBase,
    __doc__="A strategy and its parameters (GET /catalog/strategies), e.g. "
    '``{"name": "attn_only"}``; parameters the strategy does not take are refused.',
    **_strategy_fields(),
)


# ---------------------------------------------------------------------------------------------
# runs


def _known_shifts(v: list[str]) -> list[str]:
    for s in v:
        parse_shift(s)  # PftError (a ValueError) names the accepted shifts
    return v


_Shifts = Annotated[
    list[Annotated[str, Field(max_length=64)]],
    Field(max_length=MAX_SHIFTS),
    AfterValidator(_known_shifts),
]
_Overrides = Annotated[dict[str, StrictFloat], Field(max_length=len(ALLOWED_OVERRIDES))]


class RunCreate(_Strict):
    """What names a fine-tuning run's starting point: model, overrides, dataset."""

    model: str = Field(max_length=200, description="GET /catalog/models, or any timm name")
    dataset: str = Field(max_length=200, description="GET /catalog/datasets")
    pretrained: bool = True
    model_overrides: _Overrides = Field(
        default_factory=dict, description=f"timm overrides: {', '.join(ALLOWED_OVERRIDES)}"
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _check(get_spec, v)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _check(dataset_info, v)

    @field_validator("model_overrides")
    @classmethod
    def _overrides(cls, v: dict[str, int | float]) -> dict[str, int | float]:
        for key, value in v.items():
            if key not in ALLOWED_OVERRIDES:
                raise ValueError(
                    f"override {key!r} is not accepted; accepted: {', '.join(ALLOWED_OVERRIDES)}"
                )
            if not 0 < value <= 4096 or (key != "mlp_ratio" and not float(value).is_integer()):
                raise ValueError(f"override {key!r} must be a positive integer up to 4096")
        return {k: (v if k == "mlp_ratio" else int(v)) for k, v in v.items()}

    @model_validator(mode="after")
    def _consistent_overrides(self) -> RunCreate:
        if self.model_overrides:
            check_overrides(get_spec(self.model, self.model_overrides))
        return self


class _TrainCreate(RunCreate):
    hparams: HparamsCreate = Field(default_factory=HparamsCreate)
    shifts: _Shifts = Field(default_factory=list, description="shifts evaluated after training")


class FinetuneCreate(_TrainCreate):
    kind: Literal[JobKind.FINETUNE.value] = JobKind.FINETUNE
    strategy: StrategyCreate = Field(  # type: ignore[valid-type]
        default_factory=lambda: StrategyCreate(name=DEFAULT_STRATEGY)
    )


class PreviewCreate(RunCreate):
    """What ``POST /preview`` resolves: one strategy on one model (nothing is written)."""

    strategy: StrategyCreate  # type: ignore[valid-type]


class PretrainCreate(_Strict):
    """Pre-trains the built-in backbone (`pft.jobs.specs.PretrainSpec`)."""

    kind: Literal[JobKind.PRETRAIN.value]
    epochs: int | None = Field(None, ge=1, le=200, description="default: the recipe's")


class SoupCreate(_Strict):
    ingredients: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        min_length=2, max_length=MAX_INGREDIENTS, description="succeeded fine-tuning job ids"
    )
    method: Literal[tuple(MERGE_METHODS)] = Field(  # type: ignore[valid-type]
        DEFAULT_METHOD, description="one of GET /catalog/soups"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, max_length=16, description="the method's parameters"
    )
    shifts: _Shifts = Field(default_factory=list)

    @field_validator("ingredients")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("ingredients must be distinct job ids")
        return v


class SoupJobCreate(SoupCreate):
    kind: Literal[JobKind.SOUP.value]


class _RankBase(RunCreate):
    kind: Literal[JobKind.RANK.value]
    criterion: str = Field(
        max_length=64, description="GET /catalog/criteria: one that runs as a job"
    )
    seed: StrictInt = Field(
        _RANK["seed"], ge=0, le=MAX_ID, description="data order and the new head's initialisation"
    )

    @field_validator("criterion")
    @classmethod
    def _runs_as_job(cls, v: str) -> str:
        _check(get_job_criterion, v)  # names the criteria a rank job takes
        return v

    def params(self) -> dict[str, Any]:
        """The criterion parameters that were given (`pft.criteria.registry`)."""
        return self.model_dump(exclude_none=True, exclude=set(_RankBase.model_fields))


# A rank job: one optional field per public parameter of the criteria that run as jobs.
RankCreate = create_model(
    "RankCreate",
    __base__=_RankBase,
    __doc__="Per-unit scores of a selection criterion (`pft.jobs.specs.RankSpec`), e.g. "
    '``{"kind": "rank", "model": ..., "dataset": ..., "criterion": "fisher", "batches": 4}``; '
    "parameters the criterion does not take are refused.",
    **_param_fields((n, CRITERIA[n].params) for n in job_criteria()),
)


def _job_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("kind", JobKind.FINETUNE.value)
    return getattr(value, "kind", None)


class CalibrateCreate(RunCreate):
    """Measures a model's cost coefficients on a worker's device for the cost preview
    (`pft.jobs.specs.CalibrateSpec`, ``GET /cost``); ``dataset``: whose images are
    preprocessed and whose split sizes the calibration records."""

    kind: Literal[JobKind.CALIBRATE.value]
    pretrained: bool = _CAL["pretrained"]
    batch_size: StrictInt = Field(_CAL["batch_size"], ge=1, le=256, description="per step")
    steps: StrictInt = Field(_CAL["steps"], ge=1, le=20, description="measured steps per path")


# `kind` picks the body; a body without it is a fine-tuning job.
JobCreate = Annotated[
    Annotated[FinetuneCreate, Tag(JobKind.FINETUNE.value)]
    | Annotated[PretrainCreate, Tag(JobKind.PRETRAIN.value)]
    | Annotated[SoupJobCreate, Tag(JobKind.SOUP.value)]
    | Annotated[RankCreate, Tag(JobKind.RANK.value)]  # type: ignore[valid-type]
    | Annotated[CalibrateCreate, Tag(JobKind.CALIBRATE.value)],
    Discriminator(_job_kind),
]


class ExperimentCreate(_TrainCreate):
    name: str | None = Field(None, max_length=200, description="default: model, dataset")
    strategies: list[StrategyCreate] = Field(  # type: ignore[valid-type]
        min_length=1, max_length=MAX_STRATEGIES
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("name must be printable text (no control characters)")
        return v

    @model_validator(mode="after")
    def _distinct_seeds(self) -> ExperimentCreate:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self

"""Request and response bodies of the HTTP API (pydantic), named after one pattern:
``<Thing>Create`` for requests, ``<Thing>Public`` for responses.

Field validators check names against the torch-free catalogues (models, datasets, shifts,
strategies) so a bad name is a 422 naming the field and the accepted values. Checks that need
the database or a unit map (reference jobs, soup ingredients, ``k``) live in `backend.submit`.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
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
    field_validator,
    model_validator,
)

from backend.db.models import JOB_KINDS, JOB_STATUSES, SOUP_METHODS
from pft.config import Hparams
from pft.dataset_catalog import IMAGEFOLDER_PREFIX, dataset_info, parse_shift
from pft.model_catalog import ALLOWED_OVERRIDES, check_overrides, get_spec
from pft.paths import contained, datasets_dir
from pft.strategies import ORDERS, STRATEGIES

MAX_STRATEGIES = 64
MAX_SEEDS = 32
MAX_SHIFTS = 16
MAX_INGREDIENTS = 32
_HP = {f.name: f.default for f in fields(Hparams)}  # defaults: pft.config.Hparams
_NAME = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check(fn: Any, value: Any) -> Any:
    """Runs a pft validator; its PftError (a ValueError) becomes the field's 422 message."""
    fn(value)
    return value


class HparamsCreate(_Strict):
    """Training hyperparameters (pft.config.Hparams); every field is optional."""

    epochs: StrictInt = Field(_HP["epochs"], ge=1, le=1000)
    lr: float = Field(_HP["lr"], gt=0, le=1)
    batch_size: StrictInt = Field(_HP["batch_size"], ge=1, le=4096)
    weight_decay: float = Field(_HP["weight_decay"], ge=0, le=1)
    warmup_fraction: float = Field(_HP["warmup_fraction"], ge=0, lt=1)
    label_smoothing: float = Field(_HP["label_smoothing"], ge=0, lt=1)
    clip_grad: float = Field(_HP["clip_grad"], ge=0, le=1e6)
    seed: StrictInt = Field(_HP["seed"], ge=0, le=2**31 - 1)
    head_seed: StrictInt = Field(_HP["head_seed"], ge=0, le=2**31 - 1)
    compile: bool = _HP["compile"]


class StrategyCreate(_Strict):
    """A strategy and its parameters, e.g. ``{"name": "angle_topk", "k": 7, "order": "smallest",
    "reference_job": 12}`` or ``{"name": "attn_only"}``."""

    name: str = Field(max_length=64, description="one of GET /catalog/strategies")
    k: StrictInt | None = Field(
        None, ge=1, le=1024, description="angle_topk: units tuned per group"
    )
    order: Literal[ORDERS] | None = Field(None, description="angle_topk: largest or smallest")
    reference_job: int | None = Field(
        None, ge=1, le=2**31 - 1, description="angle_topk: a succeeded full fine-tuning job"
    )
    units: list[Annotated[str, Field(max_length=32)]] | None = Field(
        None, max_length=512, description="custom: unit names such as ATTN.0, FFN.11"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; accepted: {', '.join(STRATEGIES)}")
        return v

    def params(self) -> dict[str, Any]:
        """The strategy parameters that were given (without name and reference_job)."""
        return self.model_dump(exclude_none=True, exclude={"name", "reference_job"})


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


class _RunCreate(_Strict):
    model: str = Field(max_length=200, description="GET /catalog/models, or any timm name")
    dataset: str = Field(max_length=200, description="GET /catalog/datasets")
    hparams: HparamsCreate = Field(default_factory=HparamsCreate)
    pretrained: bool = True
    model_overrides: _Overrides = Field(
        default_factory=dict, description=f"timm overrides: {', '.join(ALLOWED_OVERRIDES)}"
    )
    shifts: _Shifts = Field(default_factory=list, description="shifts evaluated after training")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _check(get_spec, v)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        dataset_info(v)
        if v.startswith(IMAGEFOLDER_PREFIX):  # a folder below the datasets root, nowhere else
            contained(datasets_dir(), v[len(IMAGEFOLDER_PREFIX) :])
        return v

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
        out = {k: (v if k == "mlp_ratio" else int(v)) for k, v in v.items()}
        return out

    @model_validator(mode="after")
    def _consistent_overrides(self) -> _RunCreate:
        if self.model_overrides:
            check_overrides(get_spec(self.model, self.model_overrides))
        return self


class FinetuneCreate(_RunCreate):
    kind: Literal["finetune"] = "finetune"
    strategy: StrategyCreate = Field(default_factory=lambda: StrategyCreate(name="full"))


class PretrainCreate(_Strict):
    """Pre-trains the built-in backbone (pft/vit-tiny-fmnist) on Fashion-MNIST."""

    kind: Literal["pretrain"]
    epochs: int | None = Field(None, ge=1, le=200, description="default: the engine's")


class SoupCreate(_Strict):
    ingredients: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        min_length=2, max_length=MAX_INGREDIENTS, description="succeeded fine-tuning job ids"
    )
    method: Literal[SOUP_METHODS] = "uniform"
    shifts: _Shifts = Field(default_factory=list)

    @field_validator("ingredients")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("ingredients must be distinct job ids")
        return v


class SoupJobCreate(SoupCreate):
    kind: Literal["soup"]


def _job_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("kind", "finetune")
    return getattr(value, "kind", None)


# `kind` picks the body; a body without it is a fine-tuning job.
JobCreate = Annotated[
    Annotated[FinetuneCreate, Tag("finetune")]
    | Annotated[PretrainCreate, Tag("pretrain")]
    | Annotated[SoupJobCreate, Tag("soup")],
    Discriminator(_job_kind),
]


class ExperimentCreate(_RunCreate):
    name: str | None = Field(None, max_length=200, description="default: model, dataset")
    strategies: list[StrategyCreate] = Field(min_length=1, max_length=MAX_STRATEGIES)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
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


# ---------------------------------------------------------------------------------------------
# responses


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class JobPublic(_Public):
    id: int
    kind: Literal[JOB_KINDS]
    status: Literal[JOB_STATUSES]
    experiment_id: int | None
    model: str | None
    dataset: str | None
    strategy: str | None
    seed: int | None
    config: dict[str, Any]
    tuned_params: int | None
    total_params: int | None
    progress: float
    progress_info: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    worker: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class JobsPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class MetricPublic(_Public):
    epoch: int
    train_loss: float | None
    heldout_acc: float | None
    heldout_loss: float | None
    test_acc: float | None
    test_loss: float | None
    images_per_sec: float | None
    extra: dict[str, Any]


class AngleSet(BaseModel):
    units: dict[str, float] = {}
    tensors: dict[str, float] = {}


class EpochAngles(AngleSet):
    epoch: int


class AnglesPublic(BaseModel):
    job_id: int
    final: AngleSet | None  # None until the job recorded its final angles
    epochs: list[EpochAngles]


class ArtifactPublic(_Public):
    kind: str
    location: str
    size_bytes: int
    sha256: str
    created_at: datetime


class SoupPublic(_Public):
    id: int
    job_id: int
    status: Literal[JOB_STATUSES]
    method: Literal[SOUP_METHODS]
    ingredients: list[int]
    shifts: list[str]
    trace: list[dict[str, Any]]
    score_in: float | None
    scores_out: dict[str, float]
    error: str | None


class StrategySummary(BaseModel):
    label: str  # "attn_only", "angle_topk(k=7, order=smallest)"
    strategy: str
    params: dict[str, Any]
    jobs: int
    succeeded: int
    test_acc_mean: float | None
    test_acc_std: float | None  # sample standard deviation over seeds (0 for one seed)
    heldout_acc_mean: float | None
    shift_acc_mean: dict[str, float]  # {shift: mean accuracy over succeeded seeds}
    tuned_params: int | None
    tuned_fraction: float | None


class ExperimentPublic(_Public):
    id: int
    name: str
    model: str
    dataset: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    created_at: datetime
    status_counts: dict[str, int] = {}


class ExperimentDetail(ExperimentPublic):
    job_ids: list[int]
    summary: list[StrategySummary]


class ExperimentsPage(BaseModel):
    items: list[ExperimentPublic]
    total: int
    limit: int
    offset: int


class ExperimentCreated(BaseModel):
    experiment: ExperimentPublic
    jobs: list[JobPublic]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    broker: bool
    version: str

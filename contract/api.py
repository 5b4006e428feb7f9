"""The HTTP API's payloads: the response models the API answers with (the dashboard parses
them with these same classes) and the reports workers send on the worker routes.

Request bodies that are validated against the science registries (strategies, datasets,
models) live in `backend.schemas`; everything here is plain data.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from contract.vocab import API_PREFIX, AngleScope, JobKind, JobStatus


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---------------------------------------------------------------------------------------------
# jobs


class JobPublic(_Public):
    id: int
    kind: JobKind
    status: JobStatus
    experiment_id: int | None
    model: str | None
    dataset: str | None
    strategy: str | None
    seed: int | None
    config: dict[str, Any]  # the job's spec, verbatim (`pft.jobs.specs`, `to_dict()`)
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


class AngleRow(_Public):
    """One fine-tuned angle: of a unit (``ATTN.3``) or of one tensor of the model."""

    scope: AngleScope
    name: str
    angle_deg: float
    rel_change: float | None = None  # ||w - w0|| / ||w0||
    unit: str | None = None  # the unit the tensor belongs to (a unit row: itself; stem: None)
    group: str | None = None  # the unit's group ("ATTN", "S2.FFN")
    block: int | None = None  # the unit's block in depth order
    part: str | None = None  # the tensor's part ("qkv", "proj", "fc1", "fc2", "norm", ...)


class AngleSet(BaseModel):
    units: list[AngleRow] = []
    tensors: list[AngleRow] = []


class EpochAngles(AngleSet):
    epoch: int


class AnglesPublic(BaseModel):
    job_id: int
    final: AngleSet | None  # None until the job recorded its final angles
    epochs: list[EpochAngles]


class ArtifactPublic(_Public):
    job_id: int
    kind: str
    # Where the file is inside the artifact store, e.g. ``jobs/7/attempt-1/delta.safetensors``:
    # the same for every host and store (local folder or bucket), never a server path or URL.
    # Workers get the store's own location on their routes (`ArtifactRef`); users fetch the
    # bytes from `download`.
    path: str
    size_bytes: int
    sha256: str
    created_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _path_in_store(cls, data: Any) -> Any:
        """From a database row (or a dict) holding the store's ``location``: its `path`."""
        if isinstance(data, dict):
            if "path" in data or "location" not in data:
                return data
            return {**data, "path": store_path(data["location"], data.get("job_id"))}
        fields = ("job_id", "kind", "size_bytes", "sha256", "created_at")
        values = {name: getattr(data, name, None) for name in fields}
        return {**values, "path": store_path(data.location, values["job_id"])}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def download(self) -> str:
        """The file's bytes, checked against ``sha256``, with the users' token: a path on the
        API's origin (``GET /jobs/{id}/artifacts/{kind}/file``)."""
        return f"{API_PREFIX}/jobs/{self.job_id}/artifacts/{self.kind}/file"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def file_name(self) -> str:
        """What a download is saved as: ``job7-delta.safetensors`` (the stored file's suffix)."""
        suffix = PurePosixPath(self.path).suffix
        return f"job{self.job_id}-{self.kind}{suffix}"


def store_path(location: str, job_id: int | None) -> str:
    """The part of a recorded store ``location`` (a host's path or a URL) from the job's folder
    on: ``/data/artifacts/jobs/7/attempt-1/delta.safetensors`` -> ``jobs/7/attempt-1/...``."""
    text = str(location).replace("\\", "/")
    marker = f"jobs/{job_id}/" if job_id is not None else "jobs/"
    at = text.rfind("/" + marker)
    if at >= 0:
        return text[at + 1 :]
    return text if text.startswith(marker) else PurePosixPath(text).name


class SoupPublic(_Public):
    id: int
    job_id: int
    status: JobStatus
    method: str  # a merge method of `pft.soups` (GET /catalog/soups)
    ingredients: list[int]
    shifts: list[str]
    trace: list[dict[str, Any]]
    score_in: float | None
    scores_out: dict[str, float]
    error: str | None
    # The merge's per-unit mixing weights, as `pft.soups.pipeline.make_soup` returns them
    # (`SoupOutcome.mixing`); {} for methods that weigh no unit, and for soups built before.
    mixing: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------------
# experiments


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


# ---------------------------------------------------------------------------------------------
# results across any set of jobs (``GET /results``, `backend.results`)


class Spread(BaseModel):
    """A metric over a group's succeeded jobs (seeds): how many, mean and spread."""

    n: int
    mean: float | None
    sd: float | None  # sample standard deviation; None below two values
    ci95: float | None  # half-width of the 95% Student-t interval of the mean; None below two


class ResultGroup(BaseModel):
    """Jobs that differ only by seed: one experiment's strategy, loose jobs of one recipe (model,
    dataset, strategy, hyperparameters), or the soups of one method (and parameters)."""

    label: str  # unique within the answer: "#3 · attn_only", "loose · full", "soup (greedy)"
    source: str  # "experiment", "loose" or "soup"
    experiment_id: int | None
    kind: JobKind
    model: str | None
    dataset: str | None
    recipe: str  # the strategy label (`backend.results.strategy_label`) or "soup (<method>)"
    hparams: dict[str, Any]  # the spec's hyperparameters but the seed (a soup's: its params)
    jobs: int
    succeeded: int
    job_ids: list[int]
    heldout_acc: Spread
    test_acc: Spread
    shift_acc: dict[str, Spread]  # {shift: accuracy under it}
    tuned_params: int | None
    tuned_fraction: float | None


class ResultJob(BaseModel):
    """One job of the selection with its final accuracies (a fine-tuning job's last epoch, a
    soup's evaluation) and the group it is counted in."""

    job_id: int
    group: str  # its `ResultGroup.label`
    experiment_id: int | None
    kind: JobKind
    status: JobStatus
    seed: int | None
    tuned_params: int | None
    heldout_acc: float | None
    test_acc: float | None
    shift_acc: dict[str, float]


class ResultsView(BaseModel):
    experiments: list[int]
    loose: bool  # fine-tuning jobs of no experiment (launched from the Angles page, say)
    soups: bool
    shifts: list[str]  # every shift some job of the selection was evaluated under
    groups: list[ResultGroup]
    jobs: list[ResultJob]
    truncated: bool  # more jobs matched than one answer holds (the newest were kept)


# ---------------------------------------------------------------------------------------------
# the cost preview (`pft.cost`, ``GET /cost``)


class CostPrediction(BaseModel):
    """One strategy's predicted cost on a device kind (`pft.cost.predict.Prediction`)."""

    strategy: str
    seconds: float  # prefix_seconds + train_seconds + eval_seconds
    train_seconds: float  # what a finished job reports as result.train_seconds
    prefix_seconds: float  # the one-time prefix pass (result.prefix_cache.seconds)
    eval_seconds: float  # evaluation after every epoch
    peak_mb: float
    prefix_cached: bool  # trains on cached frozen-prefix tokens
    prefix_blocks: int  # blocks below the lowest tuned one
    device_kind: str  # "NVIDIA H100 80GB HBM3", "cpu (2 threads)"
    tuned_params: int | None = None
    provisional: bool = False  # units a reference job ranks: a placeholder selection


class CostPreview(BaseModel):
    """``GET /cost``: per strategy, the predicted cost of a run, or why there is none yet."""

    model: str
    dataset: str
    epochs: int
    batch_size: int
    augment: bool
    prefix_cache: bool
    calibrated: bool  # False: no succeeded calibrate job of this model and dataset yet
    message: str = ""  # not calibrated: how to get a calibration
    device_kind: str | None = None
    calibration_job: int | None = None  # the calibrate job the predictions come from
    pending_job: int | None = None  # a queued or running calibrate job of this model, dataset
    train_images: int | None = None
    eval_images: int | None = None  # held-out + test, evaluated after every epoch
    strategies: list[CostPrediction] = []


class CostComparison(BaseModel):
    """``GET /cost/jobs/{id}``: a fine-tuning job's predicted against measured training time
    (``train_seconds`` + ``prefix_seconds`` against the run's same two figures)."""

    job_id: int
    strategy: str | None
    predicted: CostPrediction | None = None  # None: no calibration of its model and dataset
    measured_seconds: float | None = None  # None: the job has not finished training
    message: str = ""


# ---------------------------------------------------------------------------------------------
# catalogues and previews


class ParamPublic(BaseModel):
    """One parameter of a registry entry (strategy, soup method), as a UI widget needs it."""

    name: str
    kind: str  # "int", "float", "bool", "choice", "units", "job"
    description: str
    default: Any = None
    choices: list[str] = []
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    # True: the bound itself is refused (``lr > 0``, not ``lr >= 0``); bounds are inclusive else.
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False


class RegistryEntry(BaseModel):
    name: str
    description: str
    params: list[ParamPublic] = []


class ModelPublic(BaseModel):
    name: str
    description: str
    source: str  # "builtin", "random", "hub"
    timm_name: str
    overrides: dict[str, Any]
    unit_preview: bool  # GET /models/{model}/units can answer now


class DatasetPublic(BaseModel):
    name: str
    description: str
    num_classes: int | None  # None: an image folder, counted when it is read


class ShiftPublic(BaseModel):
    name: str
    description: str
    severities: list[int]


class DatasetsCatalog(BaseModel):
    datasets: list[DatasetPublic]
    shifts: list[ShiftPublic]


class UnitPublic(BaseModel):
    name: str
    group: str
    kind: str
    block: int
    params: int
    tensors: list[str]


class UnitMapPublic(BaseModel):
    model: str
    num_classes: int
    total_params: int
    head_params: int
    depth: int
    groups: dict[str, list[str]]
    units: list[UnitPublic]
    # Tensors outside the units: the classifier, the stem (embeddings, pre-trained pooling
    # heads, block-level norms outside both branches) and the final norm (`pft.units`).
    head: list[str] = []
    stem: list[str] = []
    final_norm: list[str] = []


class SelectionPublic(BaseModel):
    """A strategy resolved on one model: exactly what it tunes."""

    name: str
    description: str = ""
    params: dict[str, Any] = {}
    tuned_params: int
    tuned_fraction: float
    units: list[str]
    # True when the units depend on a value the lab fills in at launch (a reference job's
    # angles) that the preview was not given: the counts are exact, the unit names a placeholder.
    provisional: bool = False
    # What the user should know about how the parameters were applied, e.g. "k=7 is more than
    # the 2 units of group S0.ATTN: the whole group is tuned".
    notes: list[str] = []


class UnitsPreview(BaseModel):
    unit_map: UnitMapPublic
    strategies: list[SelectionPublic]  # every strategy that needs no parameter


class ModelRow(BaseModel):
    """One model of the picker (`pft.model_picker.model_row`): mapped onto units or refused,
    before anything is queued. ``mapped`` is None while no shape table exists for it yet."""

    model: str
    description: str = ""
    source: str = ""
    mapped: bool | None
    reason: str | None = None
    depth: int | None = None
    groups: dict[str, int] = {}  # group -> number of units
    total_params: int | None = None
    tuned_params: dict[str, int] = {}  # strategy -> parameters it tunes (suggested params)
    not_applicable: list[str] = []  # strategies with nothing to tune on this model


class ModelsPage(BaseModel):
    items: list[ModelRow]


# ---------------------------------------------------------------------------------------------
# selection criteria (rank jobs and their comparison)


class CriterionEntry(RegistryEntry):
    """A selection criterion of `pft.criteria.registry` (``GET /catalog/criteria``)."""

    cost: str = ""  # what one ranking costs, in words
    # Ranks from a finished full fine-tuning run (its final angles): not run as a rank job.
    needs_reference: bool = False
    needs_training: bool = False  # runs a short full fine-tuning itself


class UnitScore(BaseModel):
    name: str  # "ATTN.3"
    group: str  # the group top-K selection ranks it in
    score: float


class RankScores(BaseModel):
    """A rank job's result: `pft rank --json` (``criterion``, ``units``, ``seconds``) plus the
    resolved parameters, the seed and the device it ran on."""

    criterion: str
    units: list[UnitScore]
    seconds: float
    params: dict[str, Any] = {}
    seed: int | None = None
    device: str | None = None


class CriterionScores(BaseModel):
    """One criterion's scores in a comparison, and the job they come from."""

    criterion: str
    job_id: int  # a rank job, or the fine-tuning job whose final angles these are
    units: list[UnitScore]
    seconds: float  # the cost: the ranking's seconds (a fine-tuning job: its training time)


class CriteriaPair(BaseModel):
    a: str
    b: str
    spearman: float | None  # None: one side ranks nothing (every score equal)
    topk_overlap: float  # share of the top-K units per group both select


class CriteriaComparison(BaseModel):
    """``GET /criteria/compare``: every pair of criteria scored on one model and dataset
    (`pft.criteria.compare`)."""

    model: str
    dataset: str
    k: int
    order: str
    criteria: list[CriterionScores]
    pairs: list[CriteriaPair]
    cost: dict[str, float]  # criterion -> seconds


class Health(BaseModel):
    status: str  # "ok" or "degraded"
    database: bool  # reachable
    database_writable: bool
    broker: bool
    version: str


# ---------------------------------------------------------------------------------------------
# the worker routes (API_PREFIX + WORKER_ROUTES, worker token)


class ArtifactRef(BaseModel):
    """Where a stored file is and what it must hash to."""

    location: str
    size_bytes: int = Field(ge=0)
    sha256: str = Field(min_length=64, max_length=64)


class ClaimRequest(BaseModel):
    worker: str = Field(min_length=1, max_length=200)  # shown on the job: host, pid, device


class Claim(BaseModel):
    """A job handed to one worker. Every later report carries ``claim``; once the API has given
    the job to another worker (or it finished) it refuses them with 409."""

    job_id: int
    kind: JobKind
    spec: dict[str, Any]  # `pft.jobs.specs.spec_from_dict(kind, spec)`
    claim: str  # this attempt's token
    attempt: int
    inputs: dict[str, ArtifactRef] = {}  # soups: ingredient job id -> its delta checkpoint
    # The job's identity beyond its id (its creation time in this database): the store's
    # attempt folders of another database's job with the same id (a lost or replaced lab.db,
    # ids counting from 1 again) are never resumed from nor pruned (`pft.store`).
    origin: str = ""


class _Claimed(BaseModel):
    claim: str = Field(min_length=1, max_length=100)


class HeartbeatReport(_Claimed):
    progress: float | None = Field(None, ge=0, le=1)
    info: dict[str, Any] = {}


class HeartbeatReply(BaseModel):
    cancel_requested: bool


class EpochRecord(BaseModel):
    epoch: int = Field(ge=1)
    metrics: dict[str, Any]
    angles: list[AngleRow] = []  # measured after this epoch (units, and tensors when sent)


class EpochReport(_Claimed, EpochRecord):
    pass


class ArtifactReport(ArtifactRef):
    kind: str = Field(min_length=1, max_length=32)  # "delta", "metrics", "angles", "soup", ...


class SoupOutcome(BaseModel):
    trace: list[dict[str, Any]] = []
    score_in: float | None = None
    scores_out: dict[str, float] = {}
    # Per-unit mixing weights of methods that weigh units (`pft.soups.averaging.Merged.mixing`):
    # {"weight": what a unit's weight means ("scale", "kept", "t"), "units": {group: {"weight",
    # "ingredients" (how many ingredients tuned it), ...}}, ...the method's own values (a chosen
    # scale and its grid, a density)}. A group is a unit of the unit map ("ATTN.3") or "head",
    # "stem", "final_norm"; only groups some ingredient tuned appear, in depth order. {} else.
    mixing: dict[str, Any] = {}


class FinishReport(_Claimed):
    """The end of an attempt, recorded in one transaction (or not at all, without the claim)."""

    status: JobStatus
    result: dict[str, Any] | None = None
    error: str | None = Field(None, max_length=4000)
    epochs: list[EpochRecord] = []  # every epoch of the run (fills any a crash left out)
    angles: list[AngleRow] = []  # measured on the final weights
    artifacts: list[ArtifactReport] = []
    soup: SoupOutcome | None = None


class ReleaseReport(_Claimed):
    """A worker that is stopping gives its job back (``POST /worker/jobs/{id}/release``): the
    job is queued again with its state saved mid-epoch, and this attempt does not count."""

    reason: str = Field("worker stopped", max_length=400)
    epochs: list[EpochRecord] = []  # the attempt's epochs (fills any a report lost)


class KillReport(_Claimed):
    """The kernel killed the process running the job for memory (``POST
    /worker/jobs/{id}/killed``, from the worker's parent, `pft.jobs.memory_kills`): the job fails
    with ``error``, also when its heartbeat went stale first and it was queued again, as long as
    no later attempt claimed it."""

    attempt: int = Field(ge=1, le=1_000_000)
    error: str = Field(min_length=1, max_length=2000)


class ShapeTableReport(BaseModel):
    key: str = Field(min_length=1, max_length=300)
    model: str = Field(min_length=1, max_length=200)
    table: dict[str, Any]

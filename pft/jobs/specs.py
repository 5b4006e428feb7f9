"""The job contract: one typed spec per job kind, torch-free (docs/CONTRACTS.md "Jobs").

The API validates a request, resolves what the lab resolves (a reference job's angles, the
strategy's defaults) and stores ``spec.to_dict()`` verbatim as the job's config; the worker
rebuilds the spec with `spec_from_dict` and hands it to `pft.jobs.run`, which returns a
`JobResult` holding everything the run computed. The CLI builds the same specs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from contract.vocab import JobKind
from pft.errors import PftError
from pft.strategies import DEFAULT_STRATEGY


def _known(cls: type, d: dict[str, Any], what: str) -> dict[str, Any]:
    """``d`` restricted to the dataclass's fields; an unknown key is a PftError naming it."""
    names = {f.name for f in fields(cls)}
    extra = sorted(set(d) - names)
    if extra:
        raise PftError(f"{what} has no field {extra[0]!r}; accepted: {', '.join(sorted(names))}")
    return d


@dataclass
class Hparams:
    epochs: int = 3  # passes over the train split
    lr: float = 1e-3  # peak AdamW learning rate
    batch_size: int = 64
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1  # fraction of steps spent in linear warmup before cosine decay
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max global grad norm; 0 disables clipping
    seed: int = 0  # data order, augmentation and dropout
    head_seed: int = 0  # head initialisation: shared by soup ingredients (Wortsman et al. 2022)
    compile: bool = False  # torch.compile the model (CUDA only)
    # Random translation (and flips where the dataset allows them) of every training batch.
    augment: bool = True
    # Train on cached frozen-prefix tokens when every tuned tensor sits at or above one block and
    # augmentation is off (`pft.prefix_cache`); False always runs the whole model every step.
    prefix_cache: bool = True
    # The most memory that cache may take on the training device, in MB (beyond it: host
    # memory on a GPU, else a memory-mapped fp16 file in the run folder).
    prefix_cache_mb: int = 8192

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Hparams:
        return cls(**_known(cls, dict(d or {}), "hparams"))


@dataclass
class FinetuneSpec:
    """Fine-tune one model on one dataset with one strategy."""

    kind: ClassVar[JobKind] = JobKind.FINETUNE

    model: str  # catalogue or timm name
    dataset: str  # dataset catalogue name (pft.dataset_catalog)
    strategy: str = DEFAULT_STRATEGY  # a name of the strategy registry (pft.strategies)
    # The strategy's parameters as resolved: defaults filled in, units in depth order, and for a
    # reference job its per-unit angles next to its id, so that the spec is self-contained.
    strategy_params: dict[str, Any] = field(default_factory=dict)
    hparams: Hparams = field(default_factory=Hparams)
    pretrained: bool = True  # False: random weights (recorded in every result)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # timm kwargs (small models)
    shifts: list[str] = field(default_factory=list)  # shift sets evaluated after training

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneSpec:
        d = dict(_known(cls, dict(d), "a fine-tuning spec"))
        d["hparams"] = Hparams.from_dict(d.get("hparams"))
        return cls(**d)


@dataclass
class PretrainSpec:
    """Pre-train the built-in backbone (`pft.pretrain`)."""

    kind: ClassVar[JobKind] = JobKind.PRETRAIN

    epochs: int | None = None  # default: the recipe's
    subset: int | None = None  # first N images of each split (smoke runs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainSpec:
        return cls(**_known(cls, dict(d), "a pre-training spec"))


@dataclass
class SoupSpec:
    """Merge succeeded fine-tuning jobs of one pre-trained start into one model."""

    kind: ClassVar[JobKind] = JobKind.SOUP

    method: str  # a name of the merge registry (pft.soups)
    ingredients: list[int]  # fine-tuning job ids, in request order
    params: dict[str, Any] = field(default_factory=dict)  # the method's parameters
    shifts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SoupSpec:
        return cls(**_known(cls, dict(d), "a soup spec"))


@dataclass
class RankSpec:
    """Score every unit of a model on a dataset by one selection criterion (`pft.criteria`);
    `pft rank` runs the same (`pft.criteria.ranking.rank`)."""

    kind: ClassVar[JobKind] = JobKind.RANK

    model: str  # catalogue or timm name
    dataset: str  # dataset catalogue name
    criterion: str  # a criterion of `pft.criteria.registry` that runs as a job (`job_criteria`)
    # The criterion's parameters as resolved: its registry defaults filled in (batches, ...).
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # data order and the new head's initialisation
    pretrained: bool = True  # False: random weights
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankSpec:
        return cls(**_known(cls, dict(d), "a rank spec"))


@dataclass
class CalibrateSpec:
    """Measure a model's cost coefficients on the worker's device (`pft.cost.calibrate`), the
    calibration behind the cost preview (`pft.cost.predict`, ``GET /cost``)."""

    kind: ClassVar[JobKind] = JobKind.CALIBRATE

    model: str  # catalogue or timm name
    # Whose images are preprocessed and whose split sizes the result records (None: random
    # images of the model's input shape, no sizes).
    dataset: str | None = None
    pretrained: bool = False  # speed does not depend on the weights; False downloads nothing
    model_overrides: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32  # images per measured step
    steps: int = 3  # measured steps per path (after one warm-up step)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrateSpec:
        return cls(**_known(cls, dict(d), "a calibration spec"))


JobSpec = FinetuneSpec | PretrainSpec | SoupSpec | RankSpec | CalibrateSpec
JOB_SPECS: dict[JobKind, type[JobSpec]] = {
    cls.kind: cls for cls in (FinetuneSpec, PretrainSpec, SoupSpec, RankSpec, CalibrateSpec)
}


def spec_from_dict(kind: str, d: dict[str, Any]) -> JobSpec:
    """The typed spec of a stored job; PftError for an unknown kind or field."""
    try:
        cls = JOB_SPECS[JobKind(kind)]
    except ValueError:
        accepted = ", ".join(k.value for k in JOB_SPECS)
        raise PftError(f"unknown job kind {kind!r}; accepted: {accepted}") from None
    try:
        return cls.from_dict(d)
    except TypeError as exc:  # a required field is missing
        raise PftError(f"{kind} spec is incomplete: {exc}") from None


@dataclass
class JobResult:
    """Everything a run computed, returned by `pft.jobs.run` (nobody re-reads its files)."""

    summary: dict[str, Any]  # the job's result: accuracies, strategy, device, timings, ...
    epochs: list[dict[str, Any]] = field(default_factory=list)  # per-epoch metrics
    # Angle rows on the final weights: {scope, name, angle_deg, rel_change, unit, group, block,
    # part} (contract.api.AngleRow).
    angles: list[dict[str, Any]] = field(default_factory=list)
    # Per-epoch angle rows of the units, {epoch: [rows]} (the trajectory).
    trajectory: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # kind -> path in the run folder
    # soups: {"trace", "score_in", "scores_out", "mixing"} (`contract.api.SoupOutcome`)
    soup: dict[str, Any] | None = None

    def epoch_records(self) -> list[dict[str, Any]]:
        """Each epoch's metrics with its angle rows (`contract.api.EpochRecord`)."""
        return [
            {"epoch": m["epoch"], "metrics": m, "angles": self.trajectory.get(m["epoch"], [])}
            for m in self.epochs
        ]

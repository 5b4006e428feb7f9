"""The selection-criterion registry, torch-free: what `pft rank` and the lab accept.

A criterion scores every unit of a model on a dataset; top-K selection over any criterion's
scores is the strategy registry's ``criterion_topk`` (`pft.strategies`; the paper's angle case
keeps its name ``angle_topk``). Each `Criterion` names the module that computes it (imported
lazily by `pft.criteria.ranking`), what it needs and costs, and its parameters, declared like a
strategy's (`pft.strategies.StrategyParam`). Adding a criterion is one entry here plus its
module, which exposes

    score(model, unit_map, data, *, seed, device, progress, **params) -> {unit: score}

(``data``: `pft.datasets.DatasetSplits`; ``progress(done, total)`` or None); the runner times
the call and wraps the numbers in a `pft.criteria.scores.Scores`. Larger scores mean more
important units for every criterion here except ``angle``, whose order depends on the task
(the paper tunes the largest angles for hard tasks, the smallest for easy ones).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pft.errors import PftError, unknown_name
from pft.strategies import StrategyParam, check_params, reference_strategies

# ``progress(done, total)``: batches (or training steps) done so far; None reports nothing.
Progress = Callable[[int, int], None] | None

_BATCHES = StrategyParam(
    "batches", "int", "batches of the training split the gradients are taken over", 8, minimum=1
)
_BATCH_SIZE = StrategyParam("batch_size", "int", "images per batch", 32, minimum=1)


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    module: str  # the module whose ``score`` computes it
    cost: str  # what one ranking costs, in words
    params: tuple[StrategyParam, ...] = ()
    # Ranks from a finished full fine-tuning run (its delta or angles.json) given as reference.
    needs_reference: bool = False
    # Runs a short full fine-tuning itself (the model is rebuilt from its catalogue name).
    needs_training: bool = False

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The parameters checked, defaults filled in; PftError (with ``field``) otherwise."""
        return check_params(f"criterion {self.name!r}", self.params, params)


_ALL = [
    Criterion(
        "angle",
        "Fine-tuned angle of each unit after a full fine-tuning run (Ye et al. 2023, FAPFT)",
        module="pft.criteria.angle",
        cost="a complete full fine-tuning run (the reference), then seconds",
        needs_reference=True,
    ),
    Criterion(
        "short_angle",
        "Fine-tuned angle of each unit after a short full fine-tuning run of a few epochs",
        module="pft.criteria.short_angle",
        cost="a short full fine-tuning run (epochs x the train split)",
        params=(
            StrategyParam("epochs", "int", "epochs of the short full run", 1, minimum=1),
            StrategyParam(
                "lr",
                "float",
                "peak learning rate of the short run",
                1e-3,
                minimum=0,
                exclusive_minimum=True,
            ),
            StrategyParam("batch_size", "int", "images per step", 64, minimum=1),
        ),
        needs_training=True,
    ),
    Criterion(
        "gradient_norm",
        "Relative gradient norm |g|/|w| of each unit over a few batches, no weight update "
        "(Auto-RGN, Lee et al. 2023, surgical fine-tuning)",
        module="pft.criteria.gradient_norm",
        cost="one forward and backward pass per batch",
        params=(_BATCHES, _BATCH_SIZE),
    ),
    Criterion(
        "fisher",
        "Diagonal Fisher information of each unit: squared gradients summed over a few "
        "batches, divided by the unit's parameter count",
        module="pft.criteria.fisher",
        cost="one forward and backward pass per batch",
        params=(_BATCHES, _BATCH_SIZE),
    ),
]
CRITERIA: dict[str, Criterion] = {c.name: c for c in _ALL}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except (KeyError, TypeError):
        raise unknown_name("criterion", name, CRITERIA, field="criterion") from None


def job_criteria() -> list[str]:
    """The criteria a rank job runs (`pft.jobs.specs.RankSpec`): every one but those that rank
    from a reference run, whose scores that finished run already recorded (its final angles)."""
    return [c.name for c in _ALL if not c.needs_reference]


def get_job_criterion(name: str) -> Criterion:
    """The criterion a rank job may run; PftError (``field="criterion"``) naming those it may."""
    c = CRITERIA.get(name) if isinstance(name, str) else None
    if c is None:
        raise unknown_name("criterion", name, job_criteria(), field="criterion")
    if c.needs_reference:
        raise PftError(
            f"criterion {c.name!r} is not run as a rank job: its scores are the final unit "
            f"angles a finished {' or '.join(reference_strategies())} fine-tuning job recorded "
            f"(use that job); rank jobs take: {', '.join(job_criteria())}",
            field="criterion",
        )
    return c


def catalogue() -> list[dict]:
    """The registry as plain data shaped like `contract.api.CriterionEntry` (a
    `contract.api.RegistryEntry` with what the criterion needs and costs)."""
    return [
        {
            "name": c.name,
            "description": c.description,
            "params": [p.public_dict() for p in c.params if p.public],
            "cost": c.cost,
            "needs_reference": c.needs_reference,
            "needs_training": c.needs_training,
        }
        for c in _ALL
    ]

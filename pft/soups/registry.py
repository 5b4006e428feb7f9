"""The merge (soup) registry, torch-free: the methods the CLI, the API and the worker accept.

Each `MergeMethod` names the module that builds it (imported lazily by `pft.soups.pipeline`),
whether it scores candidates on the held-out split (and how many), and its parameters, declared
like a strategy's (`pft.strategies.StrategyParam`). Adding a method is one entry here plus its
module, which exposes ``merge(ingredients, base, *, score, heldout_scores, **params) -> Merged``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pft.errors import PftError, unknown_name
from pft.strategies import StrategyParam, check_params

MIN_INGREDIENTS = 2
SINGLE_TUNER = ("keep", "base", "refuse")  # Model Stock: a unit only one ingredient tuned


@dataclass(frozen=True)
class MergeMethod:
    name: str
    description: str
    params: tuple[StrategyParam, ...] = ()
    needs_heldout: bool = False  # may score candidates on the held-out split while merging
    module: str = ""  # the module whose ``merge`` builds it
    # How many candidates it scores on held-out for N ingredients and its validated
    # parameters (0: none, e.g. a fixed scale); default: one per ingredient.
    candidates: Callable[[int, Mapping[str, Any]], int] | None = field(
        default=None, repr=False, compare=False
    )
    # Checks across parameters (after each was checked alone); PftError with ``field``.
    check: Callable[[Mapping[str, Any]], None] | None = field(
        default=None, repr=False, compare=False
    )

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The parameters checked, defaults filled in; PftError (with ``field``) otherwise."""
        out = check_params(f"soup method {self.name!r}", self.params, params)
        if self.check is not None:
            self.check(out)
        return out

    def heldout_candidates(self, n: int, params: Mapping[str, Any]) -> int:
        """How many soups it scores on the held-out split merging ``n`` ingredients."""
        if not self.needs_heldout:
            return 0
        return self.candidates(n, params) if self.candidates is not None else n


def _scale_grid_ordered(params: Mapping[str, Any]) -> None:
    if params["scale_min"] > params["scale_max"]:
        raise PftError(
            f"scale_min ({params['scale_min']:g}) must not exceed scale_max "
            f"({params['scale_max']:g})",
            field="scale_min",
        )


_SCALE = dict(kind="float", minimum=0.0, maximum=10.0)


_ALL = [
    MergeMethod(
        "uniform",
        "Uniform soup: the average of all ingredients (Wortsman et al. 2022)",
        module="pft.soups.uniform",
    ),
    MergeMethod(
        "greedy",
        "Greedy soup: add ingredients by held-out accuracy while it strictly rises "
        "(Wortsman et al. 2022)",
        needs_heldout=True,
        module="pft.soups.greedy",
    ),
    MergeMethod(
        "masked",
        "Masked soup: each tensor averaged over the ingredients that tuned it",
        module="pft.soups.masked",
    ),
    MergeMethod(
        "task_arithmetic",
        "Task arithmetic: the base plus a scaled sum of the ingredients' deltas, each tensor "
        "over the ingredients that tuned it; the scale chosen on held-out (Ilharco et al. 2023)",
        params=(
            StrategyParam(
                "scale",
                description="a fixed scale (no held-out search); default: chosen from the grid",
                **_SCALE,
            ),
            StrategyParam(
                "scale_min", description="smallest scale of the grid", default=0.1, **_SCALE
            ),
            StrategyParam(
                "scale_max", description="largest scale of the grid", default=1.0, **_SCALE
            ),
            StrategyParam(
                "scale_steps",
                kind="int",
                description="evenly spaced scales tried on held-out",
                default=10,
                minimum=1,
                maximum=50,
            ),
        ),
        needs_heldout=True,
        module="pft.soups.task_arithmetic",
        candidates=lambda n, p: 0 if p.get("scale") is not None else int(p["scale_steps"]),
        check=_scale_grid_ordered,
    ),
    MergeMethod(
        "ties",
        "TIES merging: trim each delta to its largest values, elect a sign per element, "
        "average the agreeing values; per tensor over the ingredients that tuned it "
        "(Yadav et al. 2023)",
        params=(
            StrategyParam(
                "density",
                kind="float",
                description="fraction of each delta's values kept by magnitude",
                default=0.2,
                minimum=0.001,
                maximum=1.0,
            ),
            StrategyParam("scale", description="scale of the merged delta", default=1.0, **_SCALE),
        ),
        module="pft.soups.ties",
    ),
    MergeMethod(
        "model_stock",
        "Model Stock: per unit, interpolate the ingredients' mean toward the base by the "
        "angle between their deltas; needs two or more (Jang et al. 2024)",
        params=(
            StrategyParam(
                "single_tuner",
                kind="choice",
                description="a unit only one ingredient tuned: keep its weights, keep the "
                "base, or refuse",
                default=SINGLE_TUNER[0],
                choices=SINGLE_TUNER,
            ),
        ),
        module="pft.soups.model_stock",
    ),
]
MERGE_METHODS: dict[str, MergeMethod] = {m.name: m for m in _ALL}
DEFAULT_METHOD = _ALL[0].name  # what a soup request without a method gets


def get_method(name: str) -> MergeMethod:
    try:
        return MERGE_METHODS[name]
    except (KeyError, TypeError):
        raise unknown_name("soup method", name, MERGE_METHODS, field="method") from None


def catalogue() -> list[dict]:
    """The registry as plain data shaped like `contract.api.RegistryEntry`."""
    return [
        {
            "name": m.name,
            "description": m.description,
            "params": [p.public_dict() for p in m.params if p.public],
        }
        for m in _ALL
    ]

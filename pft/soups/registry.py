"""The merge (soup) registry, torch-free: the methods the CLI, the API and the worker accept.

Each `MergeMethod` names the module that builds it (imported lazily by `pft.soups.pipeline`),
whether it scores candidates on the held-out split, and its parameters, declared like a
strategy's (`pft.strategies.StrategyParam`). Adding a method is one entry here plus its module,
which exposes ``merge(ingredients, base, *, score, heldout_scores, **params) -> Merged``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pft.errors import unknown_name
from pft.strategies import StrategyParam, check_params

MIN_INGREDIENTS = 2


@dataclass(frozen=True)
class MergeMethod:
    name: str
    description: str
    params: tuple[StrategyParam, ...] = ()
    needs_heldout: bool = False  # scores candidates on the held-out split while merging
    module: str = ""  # the module whose ``merge`` builds it

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The parameters checked, defaults filled in; PftError (with ``field``) otherwise."""
        return check_params(f"soup method {self.name!r}", self.params, params)


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

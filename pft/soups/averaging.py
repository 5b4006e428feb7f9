"""Weight averaging over ingredients, streamed: what the uniform, masked and greedy soups share.

Ingredients are *deltas*: mappings holding only the tensors a run tuned (a full fine-tuning
delta holds every tensor). ``base`` is the pre-trained state dict with the task's head shape,
which supplies every tensor an ingredient did not tune. Ingredients are read one at a time:
memory holds the running sum and one ingredient, whatever their number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pft.errors import PftError

State = Mapping[str, torch.Tensor]


def _check_tensor(name: str, value: torch.Tensor, base: State | None, where: str) -> None:
    if base is None:
        return
    if name not in base:
        raise PftError(f"{where}: tensor {name!r} does not exist in the pre-trained model")
    if tuple(base[name].shape) != tuple(value.shape):
        raise PftError(
            f"{where}: tensor {name!r} has shape {tuple(value.shape)}, the pre-trained model "
            f"{tuple(base[name].shape)} (a different model or head size)"
        )


def _average(
    ingredients: Iterable[State], base: State | None, masked: bool
) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    n = 0
    seen_keys: set[str] | None = None
    for i, delta in enumerate(ingredients):
        n += 1
        if base is None:  # full state dicts: every ingredient must hold the same tensors
            keys = set(delta)
            if seen_keys is not None and keys != seen_keys:
                odd = sorted(keys ^ seen_keys)[0]
                raise PftError(f"ingredient {i}: tensor {odd!r} is not in every ingredient")
            seen_keys = keys
        for name, value in delta.items():
            _check_tensor(name, value, base, f"ingredient {i}")
            if name in sums and sums[name].shape != value.shape:
                raise PftError(
                    f"ingredient {i}: tensor {name!r} has shape {tuple(value.shape)}, "
                    f"other ingredients {tuple(sums[name].shape)}"
                )
            if name not in sums:
                # For a uniform soup, earlier ingredients that did not tune this tensor
                # contributed its pre-trained value.
                start = 0 if masked else i
                sums[name] = value.detach().to(torch.float64).clone()
                if start and base is not None:
                    sums[name] += start * base[name].to(torch.float64)
                counts[name] = 1 if masked else i + 1
            else:
                sums[name] += value.detach().to(torch.float64)
                counts[name] += 1
        if not masked and base is not None:
            for name in sums.keys() - delta.keys():
                sums[name] += base[name].to(torch.float64)
                counts[name] += 1
    if n == 0:
        raise PftError("a soup needs at least one ingredient")
    dtype = {k: v.dtype for k, v in (base or {}).items() if k in sums}
    return {k: (s / counts[k]).to(dtype.get(k, torch.float32)) for k, s in sums.items()}


def full_state(delta: State, base: State) -> dict[str, torch.Tensor]:
    """The whole model's state: ``base`` with the delta's tensors replaced."""
    return {**base, **delta}


@dataclass
class Merged:
    """A merge method's outcome: the soup (a delta over ``base``), the ingredients it holds
    (indices into the ingredients given), for methods that choose ingredients their trace
    (greedy: one decision per ingredient), and for methods that weigh groups their mixing:
    ``{"weight": what a group's weight is ("scale", "kept", "t"), "units": {group: {"weight",
    "ingredients", ...}}, ...}`` plus the method's own values (a chosen scale, its grid)."""

    soup: dict[str, torch.Tensor]
    selected: list[int]
    trace: list[dict[str, Any]] = field(default_factory=list)
    mixing: dict[str, Any] = field(default_factory=dict)

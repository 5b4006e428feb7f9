"""Task arithmetic (Ilharco et al., ICLR 2023): the base plus a scaled sum of task vectors,
``w = w_base + λ · Σ_i (w_i - w_base)``, each tensor summed over the ingredients that tuned it.

λ is ``scale`` when given; otherwise it is chosen on the held-out split from the grid
``scale_min .. scale_max`` (``scale_steps`` evenly spaced values): the value with the best
held-out score, the smallest such value on ties (the score must strictly rise). The sum of task
vectors is built once, streamed (one ingredient tensor resident at a time); each candidate is
``λ · sum`` on top of the base, so memory holds the float64 sum and one candidate soup.
Buffers (BatchNorm statistics) are averaged, not summed (`pft.soups.deltas`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from pft.errors import PftError
from pft.soups import deltas
from pft.soups.averaging import Merged, State


def scale_grid(low: float, high: float, steps: int) -> list[float]:
    """``steps`` evenly spaced values from ``low`` to ``high`` (both included)."""
    if steps == 1:
        return [float(low)]
    return [round(low + (high - low) * k / (steps - 1), 10) for k in range(steps)]


def task_vector_sum(
    ingredients: Sequence[State], base: State, owners: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    """Per tensor of ``owners``, ``Σ_i (w_i - w_base)`` over the ingredients that tuned it
    (float64)."""
    sums = {}
    for name, mine in owners.items():
        total = None
        for d in deltas.task_vectors(ingredients, base, name, mine):
            total = d if total is None else total.add_(d)
        sums[name] = total
    return sums


def scaled(
    sums: dict[str, torch.Tensor], base: State, scale: float, stats: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The soup ``w_base + scale · sum`` (a delta over ``base``), with the statistics."""
    soup = {name: deltas.apply(base, name, scale * s) for name, s in sums.items()}
    return deltas.in_base_order(soup | stats, base)


def merge(
    ingredients: Sequence[State],
    base: State,
    *,
    score: Callable[[State], float] | None = None,
    scale: float | None = None,
    scale_min: float = 0.1,
    scale_max: float = 1.0,
    scale_steps: int = 10,
    buffers: Collection[str] = (),
    **_: Any,
) -> Merged:
    owners, stats = deltas.split_statistics(
        ingredients, base, deltas.tuned_by(ingredients, base), buffers
    )
    sums = task_vector_sum(ingredients, base, owners)
    grid: list[dict[str, float]] = []
    if scale is None:
        if score is None:
            raise PftError(
                "task arithmetic chooses its scale on a dataset's held-out split; give a "
                "dataset or a fixed scale",
                field="scale",
            )
        best = -float("inf")
        for value in scale_grid(scale_min, scale_max, scale_steps):
            heldout = float(score(scaled(sums, base, value, stats)))  # one candidate resident
            grid.append({"scale": value, "heldout": heldout})
            if heldout > best:
                best, scale = heldout, value
    assert scale is not None
    soup = scaled(sums, base, scale, stats)
    units = {
        group: deltas.unit_row(scale, len(deltas.tuners(tensors)))
        for group, tensors in deltas.group_owners(deltas.groups(base), owners).items()
    }
    mixing = {"weight": "scale", "scale": scale, "grid": grid, "units": units}
    return Merged(soup, list(range(len(ingredients))), mixing=mixing)

"""Diagonal Fisher information per unit, normalised by the unit's size.

For unit u with P_u parameters, over N batches of the training split
(`pft.criteria.gradients`), with g_b = ∇_{T_u} L_b the mean-loss gradient of batch b:

    F(u) = (1/P_u) Σ_b Σ_i (g_b)_i²

the empirical Fisher diagonal at batch level (squared mini-batch gradients, not per-example
ones), summed over the unit's parameters and divided by their count so that units of different
sizes compare. Units with the largest F are the most sensitive to their weights. No weight is
updated.
"""

from __future__ import annotations

import torch
from torch import nn

from pft.criteria.gradients import each_batch_gradient
from pft.criteria.registry import Progress
from pft.datasets import DatasetSplits
from pft.units import UnitMap


def score(
    model: nn.Module,
    unit_map: UnitMap,
    data: DatasetSplits,
    *,
    seed: int,
    batches: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> dict[str, float]:
    squares: dict[str, float] = dict.fromkeys(unit_map.unit_of_tensor(), 0.0)

    def add(grads: dict[str, torch.Tensor]) -> None:
        for name, g in grads.items():
            squares[name] += float(g.detach().double().square().sum())

    each_batch_gradient(
        model,
        unit_map,
        data.train,
        add,
        batches=batches,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    return {u.name: sum(squares[t] for t in u.tensors) / u.params for u in unit_map.units}

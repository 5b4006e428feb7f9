"""Relative gradient norm per unit (Auto-RGN; Lee et al., "Surgical Fine-Tuning Improves
Adaptation to Distribution Shifts", ICLR 2023).

For unit u with tensors T_u, over N batches of the training split (`pft.criteria.gradients`):

    ḡ_u = (1/N) Σ_b ∇_{T_u} L_b        (the mean of the N mini-batch gradients, concatenated
                                        over the unit's tensors)
    RGN(u) = ‖ḡ_u‖ / ‖w_u‖             (w_u: the unit's weights, concatenated)

Lee et al. compute ‖g‖/‖w‖ per parameter tensor; a unit here concatenates its tensors, as the
fine-tuned angle does (`pft.angles`). Units with the largest RGN learn fastest relative to
their size and are the ones to tune. No weight is updated. A unit whose weights are all zero
scores its plain gradient norm ‖ḡ_u‖.
"""

from __future__ import annotations

import math

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
    sums: dict[str, torch.Tensor] = {}

    def add(grads: dict[str, torch.Tensor]) -> None:
        for name, g in grads.items():
            g = g.detach().double()
            sums[name] = sums[name] + g if name in sums else g.clone()

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
    params = dict(model.named_parameters())
    out = {}
    for unit in unit_map.units:
        g_sq = sum(float(sums[t].square().sum()) for t in unit.tensors) / batches**2
        w_sq = sum(float(params[t].detach().double().square().sum()) for t in unit.tensors)
        out[unit.name] = math.sqrt(g_sq / w_sq) if w_sq > 0 else math.sqrt(g_sq)
    return out

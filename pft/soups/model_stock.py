"""Model Stock (Jang et al., ECCV 2024, "Model Stock: All we need is just a few fine-tuned
models"), per unit over the ingredients that tuned it.

For each group (a unit of the unit map; the head, the stem and the final norm are groups of
their own) tuned by N >= 2 ingredients: ``cos θ`` is the average pairwise cosine between their
task vectors ``w_i - w_base`` (each the group's tensors flattened and concatenated; a tensor an
ingredient did not tune counts as 0 in its vector), the ratio is
``t = N·cos θ / (1 + (N-1)·cos θ)`` and every tensor of the group becomes
``t · mean_i(w_i) + (1 - t) · w_base``, the mean over the ingredients that tuned that tensor.
The paper interpolates per layer; the unit is this lab's layer.

``cos θ`` is clamped to [0, 1], so ``t`` is in [0, 1]: deltas that are orthogonal or opposed on
average (``cos θ <= 0``, where the formula would extrapolate past the base or divide by zero at
``cos θ = -1/(N-1)``) keep the group's pre-trained value (t = 0). An ingredient whose delta over
the group is zero has cosine 0 with the others.

A group tuned by one ingredient has no angle. ``single_tuner`` says what happens: ``keep`` its
weights (the formula's N = 1 limit: a vector's cosine with itself is 1, so t = 1; what the masked
soup does), keep the ``base``, or ``refuse`` the merge naming the group. Fewer than two
ingredients are always refused.

Memory: two passes per group, one ingredient tensor resident at a time: squared norms of each
ingredient's task vector over the group, then per tensor the sums of the task vectors and of
the unit-normalised ones (``cos θ = (‖Σ_i u_i‖² - m) / (N(N-1))``, m the ingredients with a
non-zero delta), so memory holds one group's sums, not one tensor per ingredient.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from pft.errors import PftError
from pft.soups import deltas
from pft.soups.averaging import Merged, State
from pft.soups.registry import SINGLE_TUNER

MIN_TUNERS = 2
KEEP, BASE, REFUSE = SINGLE_TUNER


def ratio(cos: float, n: int) -> float:
    """``t = N·cos / (1 + (N-1)·cos)`` with ``cos`` clamped to [0, 1]."""
    c = min(max(cos, 0.0), 1.0)
    return n * c / (1.0 + (n - 1) * c)


def _group(
    ingredients: Sequence[State], base: State, tensors: Mapping[str, Sequence[int]]
) -> tuple[float, float, dict[str, torch.Tensor]]:
    """``cos θ``, ``t`` and the merged tensors of one group tuned by two or more ingredients."""
    mine = deltas.tuners(tensors)
    norm2 = dict.fromkeys(mine, 0.0)
    for name, owners in tensors.items():  # pass 1: each ingredient's norm over the group
        for i, d in zip(owners, deltas.task_vectors(ingredients, base, name, owners), strict=True):
            norm2[i] += float(d.square().sum())
    norms = {i: math.sqrt(v) for i, v in norm2.items()}
    unit_sum2, means = 0.0, {}
    for name, owners in tensors.items():  # pass 2: sums of deltas and of unit deltas
        total = unit = None
        for i, d in zip(owners, deltas.task_vectors(ingredients, base, name, owners), strict=True):
            u = d / norms[i] if norms[i] > 0 else torch.zeros_like(d)
            unit = u if unit is None else unit.add_(u)
            total = d if total is None else total.add_(d)
        unit_sum2 += float(unit.square().sum())
        means[name] = total / len(owners)
    n, m = len(mine), sum(1 for v in norms.values() if v > 0)
    cos = (unit_sum2 - m) / (n * (n - 1))
    t = ratio(cos, n)
    return cos, t, {name: deltas.apply(base, name, t * mean) for name, mean in means.items()}


def merge(
    ingredients: Sequence[State],
    base: State,
    *,
    single_tuner: str = KEEP,
    buffers: Collection[str] = (),
    **_: Any,
) -> Merged:
    if len(ingredients) < MIN_TUNERS:
        raise PftError(
            f"Model Stock needs at least {MIN_TUNERS} ingredients (the angle between their "
            f"deltas), got {len(ingredients)}",
            field="ingredients",
        )
    owners, soup = deltas.split_statistics(
        ingredients, base, deltas.tuned_by(ingredients, base), buffers
    )
    units = {}
    for group, tensors in deltas.group_owners(deltas.groups(base), owners).items():
        mine = deltas.tuners(tensors)
        if len(mine) >= MIN_TUNERS:
            cos, t, merged = _group(ingredients, base, tensors)
            soup |= merged
            units[group] = deltas.unit_row(t, len(mine), cos=cos)
            continue
        if single_tuner == REFUSE:
            raise PftError(
                f"Model Stock needs two or more ingredients tuning each unit; {group} was tuned "
                f"only by ingredient {mine[0]} (single_tuner={KEEP} keeps its weights, "
                f"single_tuner={BASE} the pre-trained ones)",
                field="ingredients",
            )
        if single_tuner == KEEP:
            soup |= {n: ingredients[mine[0]][n].to(base[n].dtype) for n in tensors}
        units[group] = deltas.unit_row(1.0 if single_tuner == KEEP else 0.0, 1, cos=None)
    soup = deltas.in_base_order(soup, base)
    mixing = {"weight": "t", "single_tuner": single_tuner, "units": units}
    return Merged(soup, list(range(len(ingredients))), mixing=mixing)

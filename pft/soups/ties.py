"""TIES merging (Yadav et al., NeurIPS 2023, "Resolving Interference When Merging Models"),
tensor by tensor over the ingredients that tuned each tensor:

1. *trim*: each task vector ``w_i - w_base`` keeps its ``k = max(1, round(density · n))``
   largest magnitudes (values tied with the k-th largest are kept too), the rest set to 0;
2. *elect*: each element's sign is the sign of the sum of the trimmed task vectors; an element
   whose sum is exactly 0 takes the tensor's majority sign (the sign of the sum of the elected
   signs), as in the reference implementation (prateeky2806/ties-merging, ``resolve_sign``);
3. *disjoint mean*: each element averages the trimmed values that agree with its elected sign
   (zeros never count), and the soup is ``w_base + scale · mean``.

The paper trims over the whole flattened model; like mergekit, this trims per tensor, so a
partial ingredient's tensors are trimmed on their own scale. Memory: two passes per tensor
(sign, then agreeing mean), each holding the tensor's accumulators and one ingredient tensor,
so it does not grow with the number of ingredients (each tuned tensor is read twice).

The per-group mixing weight is the kept fraction: of the group's tuned elements (summed over
the ingredients that tuned them), the share that survives trimming and the sign election.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch

from pft.soups import deltas
from pft.soups.averaging import Merged, State


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its ``max(1, round(density · numel))`` largest magnitudes zeroed."""
    n = delta.numel()
    k = min(n, max(1, round(density * n)))
    if k == n:
        return delta
    magnitude = delta.abs()
    threshold = magnitude.flatten().kthvalue(n - k + 1).values  # the k-th largest
    return torch.where(magnitude >= threshold, delta, torch.zeros_like(delta))


def elect(total: torch.Tensor) -> torch.Tensor:
    """The sign of each element's summed trimmed deltas; zeros take the majority sign."""
    sign = torch.sign(total)
    sign[sign == 0] = torch.sign(sign.sum())
    return sign


def ties_tensor(
    ingredients: Sequence[State], base: State, name: str, owners: Sequence[int], density: float
) -> tuple[torch.Tensor, int]:
    """The merged task vector of one tensor (before scaling) and how many trimmed values
    agreed with their elected sign."""
    total = None
    for d in deltas.task_vectors(ingredients, base, name, owners):  # pass 1: the signs
        t = trim(d, density)
        total = t if total is None else total.add_(t)
    sign = elect(total)
    agreed_sum = torch.zeros_like(total)
    agreed = torch.zeros(total.shape, dtype=torch.int64)
    for d in deltas.task_vectors(ingredients, base, name, owners):  # pass 2: disjoint mean
        t = trim(d, density)
        # As the reference: a positive sign keeps positive values, any other negative ones.
        keep = torch.where(sign > 0, t > 0, t < 0)
        agreed_sum += torch.where(keep, t, torch.zeros_like(t))
        agreed += keep
    return agreed_sum / agreed.clamp(min=1), int(agreed.sum())


def merge(
    ingredients: Sequence[State],
    base: State,
    *,
    density: float = 0.2,
    scale: float = 1.0,
    buffers: Collection[str] = (),
    **_: Any,
) -> Merged:
    owners, soup = deltas.split_statistics(
        ingredients, base, deltas.tuned_by(ingredients, base), buffers
    )
    kept = {}
    for name, mine in owners.items():
        merged, kept[name] = ties_tensor(ingredients, base, name, mine, density)
        soup[name] = deltas.apply(base, name, scale * merged)
    units = {}
    for group, tensors in deltas.group_owners(deltas.groups(base), owners).items():
        total = sum(base[t].numel() * len(o) for t, o in tensors.items())
        fraction = sum(kept[t] for t in tensors) / total
        units[group] = deltas.unit_row(fraction, len(deltas.tuners(tensors)))
    mixing = {"weight": "kept", "density": density, "scale": scale, "units": units}
    return Merged(deltas.in_base_order(soup, base), list(range(len(ingredients))), mixing=mixing)

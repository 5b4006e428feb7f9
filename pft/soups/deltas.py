"""Task vectors of partial ingredients, read one tensor at a time: what task arithmetic, TIES
and Model Stock share.

An ingredient is a delta checkpoint (a mapping holding only the tensors its run tuned, read
lazily from safetensors); its *task vector* for a tensor it tuned is ``w_i - w_base`` (float64).
A tensor is merged over the ingredients that tuned it; tensors nobody tuned stay the base and
are left out of the soup. The methods walk tensor by tensor and, within a tensor, ingredient
by ingredient, so memory holds the soup, the tensor's accumulators and one ingredient tensor,
whatever the number of ingredients.

Persistent buffers that travel with a tuned module (a BatchNorm's running statistics and its
batch counter: ``buffers``, and any tensor that is not floating point) are statistics, not
weights: a task vector of a running variance is no direction in weight space, and a scaled sum
of them can turn negative. The delta-based methods give each the masked soup's value, the mean
over the ingredients that tuned it (`statistic_mean`), and leave them out of their mixing.

Mixing weights are reported per *group*: each unit of the unit map (`pft.units`), plus the
head, the stem and the final norm as groups of their own (named ``head``, ``stem``,
``final_norm``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import torch

from pft.errors import PftError
from pft.units import build_unit_map
from pft.weights import shape_of

State = Mapping[str, torch.Tensor]
HEAD, STEM, FINAL_NORM = "head", "stem", "final_norm"  # the groups outside the units


def tuned_by(ingredients: Sequence[State], base: State) -> dict[str, list[int]]:
    """Each tensor some ingredient tuned -> the ingredients that tuned it, in the base's order.

    Checks names and shapes against ``base`` without reading a tensor (lazy mappings know their
    shapes); PftError naming the ingredient and the tensor otherwise.
    """
    owners: dict[str, list[int]] = {}
    for i, delta in enumerate(ingredients):
        for name in delta:
            if name not in base:
                raise PftError(
                    f"ingredient {i}: tensor {name!r} does not exist in the pre-trained model"
                )
            shape, expected = tuple(shape_of(delta, name)), tuple(base[name].shape)
            if shape != expected:
                raise PftError(
                    f"ingredient {i}: tensor {name!r} has shape {shape}, the pre-trained model "
                    f"{expected} (a different model or head size)"
                )
            owners.setdefault(name, []).append(i)
    if not ingredients:
        raise PftError("a soup needs at least one ingredient", field="ingredients")
    order = {name: k for k, name in enumerate(base)}
    return dict(sorted(owners.items(), key=lambda item: order[item[0]]))


def task_vector(delta: State, base: State, name: str) -> torch.Tensor:
    """``w_i - w_base`` for one tensor, in float64."""
    return delta[name].detach().to(torch.float64) - base[name].detach().to(torch.float64)


def task_vectors(
    ingredients: Sequence[State], base: State, name: str, owners: Sequence[int]
) -> Iterator[torch.Tensor]:
    """The task vectors of ``name`` of its ``owners``, one resident at a time."""
    for i in owners:
        yield task_vector(ingredients[i], base, name)


def is_statistic(name: str, base: State, buffers: Collection[str]) -> bool:
    """Whether ``name`` is merged as a statistic (a buffer or not floating point)."""
    return name in buffers or not base[name].is_floating_point()


def statistic_mean(
    ingredients: Sequence[State], base: State, name: str, owners: Sequence[int]
) -> torch.Tensor:
    """The mean of ``name`` over its ``owners`` (one resident at a time), in the base's dtype."""
    total = None
    for i in owners:
        value = ingredients[i][name].detach().to(torch.float64)
        total = value if total is None else total.add_(value)
    return (total / len(owners)).to(base[name].dtype)


def split_statistics(
    ingredients: Sequence[State],
    base: State,
    owners: Mapping[str, Sequence[int]],
    buffers: Collection[str],
) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
    """``owners`` without the statistics, and the statistics' merged values."""
    weights = {n: list(o) for n, o in owners.items() if not is_statistic(n, base, buffers)}
    stats = {
        n: statistic_mean(ingredients, base, n, o) for n, o in owners.items() if n not in weights
    }
    return weights, stats


def in_base_order(soup: dict[str, torch.Tensor], base: State) -> dict[str, torch.Tensor]:
    order = {name: k for k, name in enumerate(base)}
    return dict(sorted(soup.items(), key=lambda item: order[item[0]]))


def apply(base: State, name: str, delta: torch.Tensor) -> torch.Tensor:
    """``w_base + delta`` in the base's dtype."""
    return (base[name].detach().to(torch.float64) + delta).to(base[name].dtype)


def groups(base: State) -> dict[str, tuple[str, ...]]:
    """The groups mixing weights are reported for (and Model Stock merges by): the stem, each
    unit in depth order, the final norm and the head; empty groups left out."""
    um = build_unit_map(
        ((n, tuple(t.shape)) for n, t in base.items()),
        model="the ingredients' base",
        num_classes=0,  # grouping needs names only
    )
    out: dict[str, tuple[str, ...]] = {STEM: um.stem}
    out |= {u.name: u.tensors for u in um.units}
    out |= {FINAL_NORM: um.final_norm, HEAD: um.head}
    return {g: ts for g, ts in out.items() if ts}


def group_owners(
    grouping: Mapping[str, Sequence[str]], owners: Mapping[str, Sequence[int]]
) -> dict[str, dict[str, list[int]]]:
    """Per group, its tuned tensors -> their owners; groups nobody tuned left out."""
    out: dict[str, dict[str, list[int]]] = {}
    for group, tensors in grouping.items():
        tuned = {t: list(owners[t]) for t in tensors if t in owners}
        if tuned:
            out[group] = tuned
    return out


def tuners(tensors: Mapping[str, Sequence[int]]) -> list[int]:
    """The ingredients that tuned any of ``tensors``, in input order."""
    return sorted({i for owners in tensors.values() for i in owners})


def unit_row(weight: float, ingredients: int, **extra: Any) -> dict[str, Any]:
    """One group's mixing record: its weight (what it means is the method's ``weight``), the
    number of ingredients that tuned it, and anything the method adds."""
    return {"weight": float(weight), "ingredients": int(ingredients), **extra}

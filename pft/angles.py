"""Fine-tuned angles: how far each unit (and tensor) rotated away from its pre-trained weights.

Ye et al. (arXiv 2312.15681) rank units by the angle between pre-trained and fine-tuned weights
(the arccos form of layer rotation, Carbonnelle & De Vleeschouwer 2019). ``arccos(cos)`` cannot
resolve small angles (cos ≈ 1 - θ²/2 loses θ below ~1e-4 rad in float64), so we use
``θ = 2·atan2(‖â − b̂‖, ‖â + b̂‖)`` on the unit vectors â, b̂, accumulated in float64.

Tensors are read one at a time in two passes (norms, then the unit-vector sums), so a large
model needs no extra copy of its weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from contract.vocab import AngleScope
from pft.errors import PftError
from pft.units import UnitMap, tensor_part


@dataclass(frozen=True)
class AngleReport:
    units: dict[str, float]  # unit name -> angle in degrees
    rel_change: dict[str, float]  # unit name -> ‖Δ‖ / ‖w₀‖
    tensors: dict[str, float | None]  # tensor name -> degrees (None where a norm is zero)

    def to_dict(self, unit_map: UnitMap | None = None) -> dict:
        """The JSON contract: ``{"units": [{name, angle_deg, rel_change}],
        "tensors": [{name, angle_deg}]}``.

        With a unit map, entries also carry ``group``, ``block`` and (tensors) ``unit``/``part``
        for heatmaps.
        """
        info = {u.name: u for u in unit_map.units} if unit_map else {}
        owner = unit_map.unit_of_tensor() if unit_map else {}
        units = []
        for name, deg in self.units.items():
            row = {"name": name, "angle_deg": deg, "rel_change": self.rel_change[name]}
            if name in info:
                row |= {"group": info[name].group, "block": info[name].block}
            units.append(row)
        tensors = []
        for name, deg in self.tensors.items():
            row = {"name": name, "angle_deg": deg}
            if name in owner:
                row |= {"unit": owner[name], "part": tensor_part(name)}
            tensors.append(row)
        return {"units": units, "tensors": tensors}

    def rows(self, unit_map: UnitMap) -> list[dict[str, Any]]:
        """Full angle rows, units then tensors (`contract.api.AngleRow`)."""
        return angle_rows(self.to_dict(unit_map))


def angle_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{scope, name, angle_deg, rel_change, unit, group, block, part}`` from the JSON
    contract of `AngleReport.to_dict` (with a unit map), as ``angles.json`` holds it.

    A tensor row takes group and block from its unit; undefined angles (a tensor whose norm is
    zero) have no row.
    """
    rows, where = [], {}
    for u in data.get("units", []):
        where[u["name"]] = (u.get("group"), u.get("block"))
        if u.get("angle_deg") is None:
            continue
        rows.append(
            {
                "scope": AngleScope.UNIT.value,
                "name": u["name"],
                "angle_deg": float(u["angle_deg"]),
                "rel_change": u.get("rel_change"),
                "unit": u["name"],
                "group": u.get("group"),
                "block": u.get("block"),
                "part": None,
            }
        )
    for t in data.get("tensors", []):
        if t.get("angle_deg") is None:
            continue
        group, block = where.get(t.get("unit"), (None, None))
        rows.append(
            {
                "scope": AngleScope.TENSOR.value,
                "name": t["name"],
                "angle_deg": float(t["angle_deg"]),
                "rel_change": None,
                "unit": t.get("unit"),
                "group": group,
                "block": block,
                "part": t.get("part"),
            }
        )
    return rows


def unit_rows(
    units: Mapping[str, float | None],
    rel_change: Mapping[str, float | None],
    unit_map: UnitMap | None = None,
    where: Mapping[str, tuple[str | None, int | None]] | None = None,
) -> list[dict[str, Any]]:
    """Unit rows of one trajectory point, placed by a unit map (or by ``where``: name ->
    (group, block), for points read back from ``angles.json``)."""
    if unit_map is not None:
        where = {u.name: (u.group, u.block) for u in unit_map.units}
    where = where or {}
    entries = []
    for name, deg in units.items():
        group, block = where.get(name, (None, None))
        row = {"name": name, "angle_deg": deg, "rel_change": rel_change.get(name)}
        entries.append(row | {"group": group, "block": block})
    return angle_rows({"units": entries})


def angle_from_sums(diff_sq: float, sum_sq: float) -> float:
    """Degrees between two unit vectors given ‖â − b̂‖² and ‖â + b̂‖²."""
    return math.degrees(2.0 * math.atan2(math.sqrt(diff_sq), math.sqrt(sum_sq)))


def _pair(pre: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor], name: str):
    if name not in pre:
        raise PftError(f"tensor {name!r} is missing from the pre-trained weights")
    if name not in ft:
        raise PftError(f"tensor {name!r} is missing from the fine-tuned weights")
    a, b = pre[name], ft[name]
    if tuple(a.shape) != tuple(b.shape):
        raise PftError(
            f"tensor {name!r} has shape {tuple(a.shape)} pre-trained but {tuple(b.shape)} "
            "fine-tuned: the checkpoints are not of the same model"
        )
    return a.detach().reshape(-1).to("cpu", torch.float64), b.detach().reshape(-1).to(
        "cpu", torch.float64
    )


def _sq(x: torch.Tensor) -> float:
    return float(torch.dot(x, x))


def compute_angles(
    pretrained: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    unit_map: UnitMap,
) -> AngleReport:
    """Per-unit and per-tensor fine-tuned angles (degrees) and per-unit relative change.

    ``pretrained`` and ``finetuned`` are read one tensor at a time (state dicts, or lazy mappings
    over safetensors files). Every unit tensor must be present in both with the same shape.
    """
    # Pass 1: squared norms of each tensor, before and after, and of the change.
    norms: dict[str, tuple[float, float, float]] = {}
    for unit in unit_map.units:
        for name in unit.tensors:
            a, b = _pair(pretrained, finetuned, name)
            norms[name] = (_sq(a), _sq(b), _sq(b - a))
    # Pass 2: ‖â ∓ b̂‖² per unit (unit-level normalisation) and per tensor (its own).
    units, rel, tensors = {}, {}, {}
    for unit in unit_map.units:
        na = math.sqrt(sum(norms[t][0] for t in unit.tensors))
        nb = math.sqrt(sum(norms[t][1] for t in unit.tensors))
        diff = summ = 0.0
        for name in unit.tensors:
            a, b = _pair(pretrained, finetuned, name)
            if na > 0 and nb > 0:
                ua, ub = a / na, b / nb
                diff += _sq(ua - ub)
                summ += _sq(ua + ub)
            ta, tb = math.sqrt(norms[name][0]), math.sqrt(norms[name][1])
            if ta > 0 and tb > 0:
                ua, ub = a / ta, b / tb
                tensors[name] = angle_from_sums(_sq(ua - ub), _sq(ua + ub))
            else:
                tensors[name] = 0.0 if norms[name][2] == 0 else None
        change = math.sqrt(sum(norms[t][2] for t in unit.tensors))
        units[unit.name] = angle_from_sums(diff, summ) if na > 0 and nb > 0 else 0.0
        rel[unit.name] = change / na if na > 0 else 0.0
    return AngleReport(units=units, rel_change=rel, tensors=tensors)

"""Where units and tensors sit on the dashboard's grids (pure, torch-free).

Rows are blocks in depth order; columns are unit kinds (``ATTN``, ``FFN``) or tensor roles
(``qkv``, ``proj``, ``fc1``, ``fc2``, ``norms``). The unit map's JSON shape is the one of
``pft.units.UnitMap.to_dict()``; tensor names are timm parameter names
(``blocks.3.attn.qkv.weight``, ``layers.1.blocks.0.mlp.fc2.bias``) or per-role names
(``blocks.3.qkv``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pft.units import UNIT_KINDS

TENSOR_ROLES = ("qkv", "proj", "fc1", "fc2", "norms")

_UNIT_NAME = re.compile(r"^(ATTN|FFN)\.(\d+)$")
_FLAT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_ROLE_PATTERNS = (
    ("qkv", re.compile(r"(^|\.)(qkv|q|k|v|q_proj|k_proj|v_proj)(\.|$)")),
    ("proj", re.compile(r"(^|\.)attn\.proj(\.|$)|(^|\.)proj(\.|$)")),
    ("fc1", re.compile(r"(^|\.)fc1(\.|$)")),
    ("fc2", re.compile(r"(^|\.)fc2(\.|$)")),
    ("norms", re.compile(r"(^|\.)(norm1|norm2|norms|norm)(\.|$)")),
)


def unit_cell(name: str) -> tuple[int, str] | None:
    """``"ATTN.3"`` -> ``(3, "ATTN")``; None for names that are not units."""
    match = _UNIT_NAME.match(name)
    return (int(match[2]), match[1]) if match else None


def tensor_role(name: str) -> str | None:
    """The heatmap column of a tensor: qkv, proj, fc1, fc2 or norms (None for other tensors)."""
    tail = name.split(".", 2)[2] if _FLAT_BLOCK.match(name) else name
    for role, pattern in _ROLE_PATTERNS:
        if pattern.search(tail):
            return role
    return None


def tensor_blocks(unit_map: Mapping | None) -> dict[str, int]:
    """Tensor name -> block index, from a unit map's JSON (exact for hierarchical models)."""
    if not unit_map:
        return {}
    return {t: int(u["block"]) for u in unit_map.get("units", []) for t in u.get("tensors", [])}


def tensor_cell(name: str, blocks: Mapping[str, int] | None = None) -> tuple[int, str] | None:
    """``"blocks.3.attn.qkv.weight"`` -> ``(3, "qkv")``; None for head, stem and final norm."""
    role = tensor_role(name)
    if role is None:
        return None
    if blocks and name in blocks:
        return blocks[name], role
    match = _FLAT_BLOCK.match(name)
    return (int(match[1]), role) if match else None


def depth_of(names: Iterable[str], unit_map: Mapping | None = None) -> int:
    """Number of block rows: from the unit map when given, else from the unit names."""
    if unit_map and unit_map.get("depth"):
        return int(unit_map["depth"])
    cells = [c for c in (unit_cell(n) for n in names) if c]
    return 1 + max(b for b, _ in cells) if cells else 0


def block_labels(depth: int) -> list[str]:
    return [f"block {i}" for i in range(depth)]


def unit_grid(values: Mapping[str, float], depth: int) -> list[list[float | None]]:
    """A depth x 2 matrix (rows: blocks, columns: ATTN, FFN) of per-unit values; None = missing."""
    grid: list[list[float | None]] = [[None] * len(UNIT_KINDS) for _ in range(depth)]
    for name, value in values.items():
        cell = unit_cell(name)
        if cell and cell[0] < depth:
            grid[cell[0]][UNIT_KINDS.index(cell[1])] = None if value is None else float(value)
    return grid


def groups_of(unit_map: Mapping | None, names: Iterable[str]) -> dict[str, list[str]]:
    """Units by group (``ATTN``, ``FFN`` or ``S1.ATTN`` ...), in depth order."""
    if unit_map and unit_map.get("groups"):
        return {g: list(us) for g, us in unit_map["groups"].items()}
    out: dict[str, list[str]] = {}
    for name in sorted(names, key=lambda n: unit_cell(n) or (10**9, n)):
        cell = unit_cell(name)
        if cell:
            out.setdefault(cell[1], []).append(name)
    return out

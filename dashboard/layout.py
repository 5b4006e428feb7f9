"""Where units and tensors sit on the dashboard's grids (pure).

Rows are blocks in depth order; columns are unit kinds (``ATTN``, ``FFN``: whatever the unit
map's units declare) or tensor parts (``qkv``, ``proj``, ``fc1``, ... as the angle rows name
them). Every position comes from the API's own fields (`contract.api.UnitPublic` and
`contract.api.AngleRow`: unit, group, block, part); nothing is parsed out of a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from contract.api import AngleRow, UnitMapPublic
from contract.vocab import AngleScope


@dataclass(frozen=True)
class Grid:
    """A blocks x columns grid and the cell of every name placed on it."""

    columns: tuple[str, ...]
    depth: int
    cells: dict[str, tuple[int, int]]  # name -> (block, column index)

    @property
    def rows(self) -> list[str]:
        return [f"block {i}" for i in range(self.depth)]

    def matrix(self, values: Mapping[str, float | None]) -> list[list[float | None]]:
        """One value per cell (None where nothing, or nothing known, sits)."""
        z: list[list[float | None]] = [[None] * len(self.columns) for _ in range(self.depth)]
        for name, value in values.items():
            if name in self.cells and value is not None:
                block, col = self.cells[name]
                z[block][col] = float(value)
        return z


def _columns(pairs: Iterable[tuple[str, int, str]], depth: int | None) -> Grid:
    """A grid from ``(name, block, column label)`` triples; columns in first-seen order."""
    columns: dict[str, int] = {}
    cells: dict[str, tuple[int, int]] = {}
    for name, block, label in pairs:
        cells[name] = (block, columns.setdefault(label, len(columns)))
    rows = depth if depth else 1 + max((b for b, _ in cells.values()), default=-1)
    return Grid(tuple(columns), rows, {n: c for n, c in cells.items() if c[0] < rows})


def unit_grid(unit_map: UnitMapPublic | None, rows: Iterable[AngleRow] = ()) -> Grid:
    """Units on blocks x kinds. Without a unit map (none known for the model yet) the angle
    rows place themselves: block by their block, column by their group."""
    if unit_map is not None:
        return _columns(((u.name, u.block, u.kind) for u in unit_map.units), unit_map.depth)
    return _columns(
        (
            (r.name, r.block, r.group)
            for r in rows
            if r.scope == AngleScope.UNIT and r.block is not None and r.group is not None
        ),
        None,
    )


def tensor_grid(rows: Iterable[AngleRow], unit_map: UnitMapPublic | None = None) -> Grid:
    """Tensors of the blocks on blocks x parts; the stem, head and final norm are left out
    (they belong to no unit)."""
    blocks = {u.name: u.block for u in unit_map.units} if unit_map else {}
    placed = []
    for r in rows:
        if r.scope != AngleScope.TENSOR or r.unit is None or r.part is None:
            continue
        block = r.block if r.block is not None else blocks.get(r.unit)
        if block is not None:
            placed.append((r.name, block, r.part))
    return _columns(placed, unit_map.depth if unit_map else None)


def groups_of(
    unit_map: UnitMapPublic | None, rows: Iterable[AngleRow] = ()
) -> dict[str, list[str]]:
    """Units by group (``ATTN``, ``FFN`` or ``S1.ATTN`` ...), in depth order."""
    if unit_map is not None:
        return {g: list(us) for g, us in unit_map.groups.items()}
    out: dict[str, list[str]] = {}
    units = [r for r in rows if r.scope == AngleScope.UNIT and r.group is not None]
    for r in sorted(units, key=lambda r: (r.block is None, r.block or 0)):
        out.setdefault(r.group, []).append(r.name)
    return out

"""Per-unit scores of one selection criterion, as `pft rank --json` prints them (torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pft.errors import PftError
from pft.units import UnitMap


@dataclass(frozen=True)
class UnitScore:
    name: str  # "ATTN.3"
    group: str  # the group top-K selection ranks it in
    score: float


@dataclass(frozen=True)
class Scores:
    criterion: str
    units: tuple[UnitScore, ...]  # in the unit map's depth order
    seconds: float  # wall-clock time the criterion took

    @classmethod
    def of(
        cls, criterion: str, unit_map: UnitMap, values: Mapping[str, float], seconds: float
    ) -> Scores:
        """``values`` (unit name -> score) placed in ``unit_map``'s order with their groups."""
        missing = [u.name for u in unit_map.units if u.name not in values]
        if missing:  # internal invariant: a criterion scores every unit
            raise RuntimeError(f"criterion {criterion!r} gave no score for {missing}")
        units = tuple(UnitScore(u.name, u.group, float(values[u.name])) for u in unit_map.units)
        return cls(criterion, units, float(seconds))

    def by_unit(self) -> dict[str, float]:
        """unit name -> score: what ``criterion_topk`` takes as ``scores``."""
        return {u.name: u.score for u in self.units}

    def to_dict(self) -> dict[str, Any]:
        """``{"criterion", "units": [{"name", "group", "score"}], "seconds"}``."""
        return {
            "criterion": self.criterion,
            "units": [{"name": u.name, "group": u.group, "score": u.score} for u in self.units],
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        """The inverse of `to_dict` (a saved `pft rank --json`); PftError for other data."""
        try:
            units = tuple(
                UnitScore(str(u["name"]), str(u["group"]), float(u["score"])) for u in data["units"]
            )
            return cls(str(data["criterion"]), units, float(data.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PftError(
                f"not per-unit scores as `pft rank --json` prints them ({type(exc).__name__}: "
                f"{exc})",
                field="scores",
            ) from None

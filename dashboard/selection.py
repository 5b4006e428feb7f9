"""Strategy previews in the browser, without a round trip per keystroke (torch-free).

The unit map comes from the backend as JSON (``UnitMap.to_dict()``); the selection rules are
pft's own (``pft.strategies``), so the preview and the job can never disagree on which units a
strategy tunes. Tuned parameters are the tuned units plus the head (everything for ``full``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pft.strategies import get_strategy, validate_params
from pft.units import Unit, UnitMap


def unit_map_from_dict(data: Mapping) -> UnitMap:
    """A shape-less UnitMap (enough for selection rules) from the unit map's JSON."""
    units = tuple(
        Unit(
            u["name"],
            u["kind"],
            int(u["block"]),
            u["group"],
            tuple(u.get("tensors", ())),
            int(u["params"]),
        )
        for u in data["units"]
    )
    return UnitMap(
        model=data.get("model", "model"),
        num_classes=int(data.get("num_classes", 1)),
        units=units,
        head=(),
        stem=(),
        final_norm=(),
        shapes={},
    )


def preview(unit_map: Mapping, strategy: str, params: Mapping[str, Any] | None = None) -> dict:
    """``{"name", "units", "tuned_params", "tuned_fraction"}`` for one strategy.

    Raises ``pft.errors.PftError`` (message safe to show) for bad parameters.
    """
    um = unit_map_from_dict(unit_map)
    spec = get_strategy(strategy)
    checked = validate_params(um, spec, dict(params or {}))
    units = sorted(spec.select(um, checked), key=um.unit_names.index)
    total = int(unit_map["total_params"])
    if spec.tunes_stem:
        tuned = total
    else:
        tuned = sum(um.unit(u).params for u in units) + int(unit_map.get("head_params", 0))
    return {
        "name": strategy,
        "units": units,
        "tuned_params": tuned,
        "tuned_fraction": tuned / total if total else 0.0,
    }

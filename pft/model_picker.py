"""Which models the lab can fine-tune, before anything is queued (torch-free).

The dashboard's model picker lists the catalogue (and, for a pattern, the timm names matching
it), each mapped or refused with the reason, with depth, groups and the parameters every
strategy tunes. Nothing here builds a model: unit maps come from shape tables (shipped, cached
in the data folder or, through ``lookup``, the backend's database); a model whose table nobody
has computed yet is listed with ``mapped: None`` and says how to get one. `pft models --check`
computes missing tables on the meta device (`pft.model_factory.check_model`); both describe a
mapped model with `unit_map_summary`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from pft.errors import PftError
from pft.model_catalog import CATALOG, get_spec, timm_names, unit_map_for
from pft.units import UnitMap

MAX_MODELS = 200  # a pattern matching more is refused: narrow it (timm has ~1,300 names)
UnitMapLookup = Callable[[str, int], UnitMap | None]  # (model, classes) -> map; None: no table


def matching_models(pattern: str) -> list[str]:
    """timm names matching a shell-style ``pattern`` (architectures; tagged names when the
    pattern has a dot), sorted."""
    tagged = "." in pattern
    names = [n for n in timm_names() if ("." in n) == tagged]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def unit_map_summary(um: UnitMap) -> dict[str, Any]:
    """A mapped model as the picker and `pft models --check` show it: ``{"mapped": True,
    "depth", "groups": {group: units}, "total_params", "tuned_params": {strategy: count},
    "not_applicable": [strategy]}``, every strategy with its suggested parameters (K: half the
    smallest group)."""
    from pft.strategies import STRATEGIES, preview_strategy, previewable, suggested_params

    tuned, skipped = {}, []
    for name, strategy in STRATEGIES.items():
        if not strategy.applies(um):
            skipped.append(name)
            continue
        params = suggested_params(um, name)
        if previewable(name, params):
            tuned[name] = preview_strategy(um, name, **params).tuned_params
    return {
        "mapped": True,
        "depth": um.depth,
        "groups": {g: len(us) for g, us in um.groups.items()},
        "total_params": um.total_params,
        "tuned_params": tuned,
        "not_applicable": skipped,
    }


def _from_tables(model: str, num_classes: int) -> UnitMap | None:
    try:
        return unit_map_for(model, num_classes)
    except LookupError:  # no shipped or cached table yet
        return None


def model_row(
    model: str, num_classes: int = 10, lookup: UnitMapLookup | None = None
) -> dict[str, Any]:
    """One model for the picker: ``{"model", "description", "source", "mapped", "reason"}`` plus
    `unit_map_summary` when mapped. ``mapped`` is False for a refused model (``reason`` says
    why) and None when no shape table exists yet (``reason`` says how to get one)."""
    spec = get_spec(model)  # PftError with close matches for an unknown name
    row: dict[str, Any] = {
        "model": model,
        "description": spec.description,
        "source": spec.source,
        "mapped": False,
        "reason": None,
    }
    try:
        um = (lookup or _from_tables)(model, num_classes)
    except PftError as exc:  # the unit map refuses the architecture, naming why
        return row | {"reason": str(exc)}
    if um is None:
        return row | {
            "mapped": None,
            "reason": f"not checked yet: `pft units {model}` computes its shapes, as a worker does "
            "the first time it loads the model",
        }
    return row | unit_map_summary(um)


def list_models(
    pattern: str | None = None,
    *,
    num_classes: int = 10,
    lookup: UnitMapLookup | None = None,
    limit: int = MAX_MODELS,
) -> list[dict[str, Any]]:
    """The picker's list: catalogue models (those matching ``pattern`` when one is given), then
    the timm names matching ``pattern``, each as `model_row`. PftError (field ``pattern``) when
    nothing matches or more than ``limit`` names do."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise PftError(
            f"num_classes must be an integer >= 1, got {num_classes!r}", field="num_classes"
        )
    names = [n for n in CATALOG if pattern is None or fnmatch.fnmatchcase(n, pattern)]
    if pattern is not None:
        names += [n for n in matching_models(pattern) if n not in CATALOG]
    if not names:
        raise PftError(
            f"no model matches {pattern!r}; give a shell-style pattern such as 'swin*'",
            field="pattern",
        )
    if len(names) > limit:
        raise PftError(
            f"{len(names)} models match {pattern!r}, at most {limit} are listed: narrow it",
            field="pattern",
        )
    return [model_row(n, num_classes, lookup) for n in names]

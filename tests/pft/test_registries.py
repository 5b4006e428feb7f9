"""Contract tests of the registries (strategies, merge methods): every declared parameter
validates good values and refuses bad ones naming itself, and the catalogues have exactly the
shape the API serves (`contract.api.RegistryEntry`)."""

from __future__ import annotations

import pytest

from contract.api import RegistryEntry, SelectionPublic
from pft.errors import PftError
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.soups import registry as soups
from pft.strategies import (
    STRATEGIES,
    StrategyParam,
    catalogue,
    manual_strategies,
    prepare_params,
    preview_strategy,
    previewable,
    resolve_strategy,
    suggested_params,
)

UM = unit_map_for(TEST_MODEL, 3)  # 4 blocks: groups of 4 units


def good_value(p: StrategyParam):
    """A value every parameter kind accepts on the test model."""
    if p.default is not None:
        return p.default
    return {
        "int": int(p.minimum or 1),
        "float": float(p.minimum or 0.5),
        "choice": p.choices[0] if p.choices else None,
        "units": [UM.unit_names[0], UM.unit_names[-1]],
        "angles": {u: float(i) for i, u in enumerate(UM.unit_names)},
        "job": 7,
        "group_k": 0.5,
    }[p.kind]


BAD_VALUES = {
    "int": ["three", True, 2.5, -10],
    "float": ["x", True],
    "choice": ["not-a-choice"],
    "units": ["ATTN.0", ["MLP.0"], [3]],
    "angles": [[1.0, 2.0], {"ATTN.0": 1.0}],
    "job": [0, "7", True],
    "group_k": [0, 1.5, True, "x", {"ATTN": 1}, {"ATTN": 0, "FFN": 1}],
}

PARAMS = [(s.name, p) for s in STRATEGIES.values() for p in s.params]


def _valid(name: str) -> dict:
    return {p.name: good_value(p) for p in STRATEGIES[name].params if p.fills is None}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_resolves_with_valid_params(name):
    sel = resolve_strategy(UM, name, **_valid(name))
    assert sel.strategy == name and not sel.provisional
    SelectionPublic.model_validate(sel.to_dict(STRATEGIES[name].description))
    hidden = {p.name for p in STRATEGIES[name].params if not p.public}
    assert not hidden & set(sel.to_dict()["params"])


@pytest.mark.parametrize(("name", "param"), PARAMS, ids=[f"{n}.{p.name}" for n, p in PARAMS])
def test_every_declared_param_validates_and_refuses(name, param):
    assert param.kind in ("int", "float", "choice", "units", "angles", "job", "group_k")
    assert param.check(good_value(param), UM) is not None
    for bad in BAD_VALUES[param.kind]:
        with pytest.raises(PftError) as exc:
            param.check(bad, UM)
        assert exc.value.field == param.name
    if param.required and param.fills is None:
        params = _valid(name)
        del params[param.name]
        with pytest.raises(PftError) as exc:
            resolve_strategy(UM, name, **params)
        # a value the lab fills is asked for through the public parameter that fills it
        asked = next((q.name for q in STRATEGIES[name].params if q.fills == param.name), None)
        assert exc.value.field == (param.name if param.public else asked)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_unknown_params_are_refused_naming_them(name):
    with pytest.raises(PftError, match="takes no parameter 'bogus'") as exc:
        resolve_strategy(UM, name, **_valid(name), bogus=1)
    assert exc.value.field == "bogus"
    with pytest.raises(PftError) as exc:
        prepare_params(name, {"bogus": 1}, fill=lambda p, v: v)
    assert exc.value.field == "bogus"


def test_the_papers_eight_manual_strategies_are_flagged():
    assert len(manual_strategies()) == 8
    assert all(STRATEGIES[n].paper for n in manual_strategies())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_prepare_params_fills_what_the_lab_resolves(name):
    strategy = STRATEGIES[name]
    given = {p.name: good_value(p) for p in strategy.params if p.public}
    calls = []

    def fill(param, value):
        calls.append((param.name, value))
        return {u: 1.0 for u in UM.unit_names}

    params = prepare_params(name, given, fill=fill)
    for p in strategy.params:
        if p.fills:
            assert (p.name, given[p.name]) in calls and p.fills in params
    sel = resolve_strategy(UM, name, **params)  # the stored params resolve as they are
    assert set(given) <= set(sel.params)


def test_prepare_params_names_the_missing_public_param():
    needs = [s for s in STRATEGIES.values() if any(p.fills for p in s.params)]
    assert needs
    for s in needs:
        filler = next(p for p in s.params if p.fills)
        given = {p.name: good_value(p) for p in s.params if p.public and p is not filler}
        with pytest.raises(PftError) as exc:
            prepare_params(s.name, given, fill=lambda p, v: v)
        assert exc.value.field == filler.name


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_preview_without_filled_values_is_provisional_with_exact_counts(name):
    strategy = STRATEGIES[name]
    params = suggested_params(UM, name) | {
        p.name: good_value(p) for p in strategy.params if p.public and p.fills is None
    }
    assert previewable(name, params)
    preview = preview_strategy(UM, name, **params)
    filled = any(not p.public for p in strategy.params)
    assert preview.provisional == filled
    full = resolve_strategy(UM, name, **_valid(name) | params)
    assert preview.tuned_params == full.tuned_params and len(preview.units) == len(full.units)
    assert not {p.name for p in strategy.params if not p.public} & set(preview.params)


def test_suggested_k_is_half_the_smallest_group():
    ranked = [s.name for s in STRATEGIES.values() if any(p.suggest for p in s.params)]
    assert ranked
    for name in ranked:
        assert suggested_params(UM, name)["k"] == 2


@pytest.mark.parametrize("entries", [catalogue(), soups.catalogue()], ids=["strategies", "soups"])
def test_catalogues_are_registry_entries(entries):
    for entry in entries:
        parsed = RegistryEntry.model_validate(entry)
        assert parsed.model_dump() == entry  # no field the contract does not know


def test_strategy_catalogue_lists_public_params_only():
    for entry, strategy in zip(catalogue(), STRATEGIES.values(), strict=True):
        assert [p["name"] for p in entry["params"]] == [p.name for p in strategy.params if p.public]


@pytest.mark.parametrize("name", sorted(soups.MERGE_METHODS))
def test_every_merge_method_has_a_builder_and_validates(name):
    import importlib

    method = soups.get_method(name)
    assert callable(importlib.import_module(method.module).merge)
    assert method.validate({}) == {
        p.name: p.default for p in method.params if p.default is not None
    }
    with pytest.raises(PftError) as exc:
        method.validate({"bogus": 1})
    assert exc.value.field == "bogus"
    for param in method.params:  # every declared parameter validates and refuses
        assert param.name in method.validate({param.name: good_value(param)})
        for bad in BAD_VALUES[param.kind]:
            with pytest.raises(PftError) as exc:
                method.validate({param.name: bad})
            assert exc.value.field == param.name


def test_unknown_merge_method_suggests_a_close_one():
    name = sorted(soups.MERGE_METHODS)[0]
    with pytest.raises(PftError, match=f"close matches: {name}") as exc:
        soups.get_method(name[:-1])
    assert exc.value.field == "method"

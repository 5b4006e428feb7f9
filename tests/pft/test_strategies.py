"""Contract tests of the strategy catalogue, parametrized over the registry and architectures."""

import random

import pytest

from pft.errors import PftError
from pft.model_catalog import unit_map_for
from pft.strategies import STRATEGIES, catalogue, manual_strategies, resolve_strategy

MANUAL_STRATEGIES = manual_strategies()

MODELS = [
    "vit_base_patch16_224.augreg_in21k",
    "vit_tiny_patch16_224.augreg_in21k",
    "deit_small_patch16_224.fb_in1k",
    "swin_tiny_patch4_window7_224.ms_in1k",
    "pft/vit-micro",
]


def params_for(name, um, k=1, seed=0):
    rng = random.Random(seed)
    if STRATEGIES[name].one_of:  # the ranked strategies: K and a number per unit
        ranked_by = next(p.name for p in STRATEGIES[name].params if p.kind == "angles")
        return {
            "k": k,
            "order": "largest",
            ranked_by: {u: rng.uniform(0, 10) for u in um.unit_names},
        }
    if name == "custom":
        return {"units": [um.unit_names[0], um.unit_names[-1]]}
    return {}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_contract(model, strategy):
    um = unit_map_for(model, 10)
    sel = resolve_strategy(um, strategy, **params_for(strategy, um))
    # The head is always tuned, and counted.
    assert set(um.head) <= set(sel.tensors)
    # Stem and final norm: only by full fine-tuning.
    frozen_unless_full = set(um.stem) | set(um.final_norm)
    assert (frozen_unless_full <= set(sel.tensors)) == (strategy == "full")
    if strategy != "full":
        assert not frozen_unless_full & set(sel.tensors)
    # Tuned tensors are exactly the selected units' tensors (+ head), counted exactly.
    if strategy != "full":
        expected = [t for u in sel.units for t in um.unit(u).tensors] + list(um.head)
        assert sorted(sel.tensors) == sorted(expected)
    assert sel.tuned_params == um.count(sel.tensors)
    assert 0 < sel.tuned_fraction <= 1
    assert len(set(sel.tensors)) == len(sel.tensors)


def test_paper_counts_vit_base():
    um = unit_map_for("vit_base_patch16_224.augreg_in21k", 100)
    counts = {
        s: resolve_strategy(um, s, **params_for(s, um, k=7)).tuned_params
        for s in ["full", "linear_probe", "attn_only", "ffn_only"]
    }
    assert counts == {
        "full": 85_875_556,
        "linear_probe": 76_900,
        "attn_only": 28_443_748,
        "ffn_only": 56_764_516,
    }
    for seed in range(5):  # "for any angles"
        sel = resolve_strategy(um, "angle_topk", **params_for("angle_topk", um, k=7, seed=seed))
        assert sel.tuned_params == 49_692_004
        assert len(sel.units) == 14


def test_eight_manual_strategies():
    assert len(MANUAL_STRATEGIES) == 8
    um = unit_map_for("pft/vit-micro", 3)  # depth 4
    units = {s: resolve_strategy(um, s).units for s in MANUAL_STRATEGIES}
    assert units["attn_first_half"] == ("ATTN.0", "ATTN.1")
    assert units["ffn_last_half"] == ("FFN.2", "FFN.3")
    assert units["blocks_first_half"] == ("ATTN.0", "FFN.0", "ATTN.1", "FFN.1")


def test_odd_depth_halves_floor_ceil():
    from pft.model_catalog import get_spec, named_shapes_from_table, shape_table
    from pft.units import build_unit_map

    table = shape_table(get_spec("pft/vit-micro"))
    shapes = [(n, s) for n, s in named_shapes_from_table(table, 3) if not n.startswith("blocks.3.")]
    um = build_unit_map(shapes, num_classes=3)
    assert um.depth == 3
    assert resolve_strategy(um, "attn_first_half").units == ("ATTN.0",)
    assert resolve_strategy(um, "attn_last_half").units == ("ATTN.1", "ATTN.2")


@pytest.mark.parametrize("order", ["largest", "smallest"])
def test_angle_topk_ranks_per_group(order):
    um = unit_map_for("pft/vit-micro", 3)
    angles = {
        "ATTN.0": 1,
        "ATTN.1": 4,
        "ATTN.2": 2,
        "ATTN.3": 3,
        "FFN.0": 9,
        "FFN.1": 5,
        "FFN.2": 7,
        "FFN.3": 6,
    }
    sel = resolve_strategy(um, "angle_topk", k=2, order=order, angles=angles)
    expected = {
        "largest": {"ATTN.1", "ATTN.3", "FFN.0", "FFN.2"},
        "smallest": {"ATTN.0", "ATTN.2", "FFN.1", "FFN.3"},
    }[order]
    assert set(sel.units) == expected


def test_angle_topk_swin_per_stage_groups():
    um = unit_map_for("swin_tiny_patch4_window7_224.ms_in1k", 3)
    sel = resolve_strategy(um, "angle_topk", **params_for("angle_topk", um, k=2))
    assert len(sel.units) == 2 * 8


def test_unknown_strategy_lists_accepted():
    um = unit_map_for("pft/vit-micro", 3)
    with pytest.raises(PftError, match="accepted: full, linear_probe") as exc:
        resolve_strategy(um, "attn_onyl")
    assert "close matches: attn_only" in str(exc.value)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_k_out_of_range(k):
    um = unit_map_for("pft/vit-micro", 3)
    with pytest.raises(PftError, match="k must be an integer >= 1"):
        resolve_strategy(um, "angle_topk", **{**params_for("angle_topk", um), "k": k})


def test_k_larger_than_a_group_takes_the_whole_group():
    um = unit_map_for("pft/vit-micro", 3)
    sel = resolve_strategy(um, "angle_topk", **params_for("angle_topk", um, k=5))
    assert len(sel.units) == 8
    assert sel.to_dict()["notes"] == [
        "k=5 is more than the 4 units of group ATTN: the whole group is tuned",
        "k=5 is more than the 4 units of group FFN: the whole group is tuned",
    ]


def test_missing_angle_is_named():
    um = unit_map_for("pft/vit-micro", 3)
    angles = dict.fromkeys(um.unit_names, 1.0)
    del angles["FFN.2"]
    with pytest.raises(PftError, match="missing unit 'FFN.2'"):
        resolve_strategy(um, "angle_topk", k=1, order="largest", angles=angles)


def test_bad_order_and_unknown_param():
    um = unit_map_for("pft/vit-micro", 3)
    p = params_for("angle_topk", um)
    with pytest.raises(PftError, match="order must be one of largest, smallest"):
        resolve_strategy(um, "angle_topk", **{**p, "order": "biggest"})
    with pytest.raises(PftError, match="takes no parameter 'k'"):
        resolve_strategy(um, "attn_only", k=3)


def test_custom_rejects_unknown_units():
    um = unit_map_for("pft/vit-micro", 3)
    with pytest.raises(PftError, match="unknown unit 'MLP.0'"):
        resolve_strategy(um, "custom", units=["MLP.0"])


def test_catalogue_is_plain_data_with_descriptions():
    import json

    cat = catalogue()
    assert [c["name"] for c in cat] == list(STRATEGIES)
    assert all(c["description"] for c in cat)
    assert {p["name"] for p in cat[-2]["params"]} == {"k", "k_groups", "order", "reference_job"}
    json.dumps(cat)

"""Backend answers -> figure data: angles in every shape the API may use, summaries, soups."""

from __future__ import annotations

import pytest

from dashboard.shaping import metrics_table, normalize_angles, summary_points
from dashboard.soup_view import (
    comparison_scores,
    family,
    family_label,
    incompatibility,
    trace_points,
)


def test_angles_from_rows_split_final_and_epochs():
    rows = [
        {"epoch": 1, "scope": "unit", "name": "ATTN.0", "angle_deg": 1.0},
        {"epoch": 2, "scope": "unit", "name": "ATTN.0", "angle_deg": 2.0},
        {"epoch": 2, "scope": "tensor", "name": "blocks.0.attn.qkv.weight", "angle_deg": 9.0},
        {"epoch": -1, "scope": "unit", "name": "ATTN.0", "angle_deg": 2.5},
        {"epoch": -1, "scope": "tensor", "name": "blocks.0.attn.qkv.weight", "angle_deg": 3.0},
    ]
    for body in (rows, {"items": rows}):
        a = normalize_angles(body)
        assert a.units == {"ATTN.0": 2.5}
        assert a.tensors == {"blocks.0.attn.qkv.weight": 3.0}
        assert a.epochs == {1: {"ATTN.0": 1.0}, 2: {"ATTN.0": 2.0}}


def test_angles_from_report_records_and_maps():
    report = {
        "units": [{"name": "FFN.1", "angle_deg": 4.0, "rel_change": 0.1}],
        "tensors": [{"name": "blocks.1.mlp.fc1.weight", "angle_deg": 5.0}],
        "epochs": {"1": {"units": {"FFN.1": 2.0}}, "2": {"FFN.1": 3.0}},
    }
    a = normalize_angles(report)
    assert a.units == {"FFN.1": 4.0}
    assert a.tensors == {"blocks.1.mlp.fc1.weight": 5.0}
    assert a.epochs == {1: {"FFN.1": 2.0}, 2: {"FFN.1": 3.0}}
    assert normalize_angles({"final": {"units": {"ATTN.0": 1}}}).units == {"ATTN.0": 1.0}
    assert normalize_angles({}).empty and normalize_angles(None).empty


def test_summary_points_skip_rows_without_accuracy():
    rows = [
        {"strategy": "full", "tuned_params": 100, "test_acc_mean": 0.9, "test_acc_std": 0.01},
        {"strategy": "attn_only", "tuned_params": 40, "test_acc_mean": None},
        {"strategy": "probe", "tuned_params": None, "test_acc_mean": 0.5},
    ]
    assert summary_points(rows) == [
        {"strategy": "full", "tuned_params": 100, "accuracy": 0.9, "spread": 0.01}
    ]


def test_metrics_table_sorts_epochs():
    rows = metrics_table([{"epoch": 2, "test_acc": 0.2, "id": 9}, {"epoch": 1, "test_acc": 0.1}])
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "id" not in rows[0]


def _job(i, **kw):
    return {
        "id": i,
        "kind": "finetune",
        "status": "succeeded",
        "model": "m",
        "dataset": "d",
        "config": {"model_overrides": {}, "pretrained": True},
        **kw,
    }


def test_incompatibility_names_the_rule_each_job_breaks():
    fam = family(_job(1))
    assert incompatibility(_job(2), fam) is None
    assert "only succeeded" in incompatibility(_job(3, status="failed"), fam)
    assert "model x differs" in incompatibility(_job(4, model="x"), fam)
    assert "dataset y differs" in incompatibility(_job(5, dataset="y"), fam)
    assert "only fine-tuning" in incompatibility(_job(6, kind="soup"), fam)
    other_base = _job(7, config={"model_overrides": {"depth": 2}, "pretrained": False})
    assert "overrides" in incompatibility(other_base, fam)
    assert family_label(fam) == "m / d"
    assert family_label(family(other_base)) == "m / d [depth=2; random init]"


def test_trace_points_follow_the_order_tried():
    soup = {
        "trace": [
            {"order": 1, "job_id": 4, "candidate_score": 0.7, "accepted": False},
            {"order": 0, "job_id": 3, "candidate_score": 0.8, "accepted": True},
        ]
    }
    assert trace_points(soup) == [
        {"step": 0, "ingredient": 3, "score": 0.8, "accepted": True},
        {"step": 1, "ingredient": 4, "score": 0.7, "accepted": False},
    ]


def test_comparison_uses_the_best_held_out_ingredient_and_the_uniform_soup():
    soup = {"method": "greedy", "score_in": 0.9, "scores_out": {"noise": 0.6}}
    ingredients = [
        _job(1, result={"heldout_acc": 0.8, "test_acc": 0.85, "shifts": {"noise": 0.5}}),
        _job(2, result={"heldout_acc": 0.7, "test_acc": 0.95}),
    ]
    uniform = {"method": "uniform", "score_in": 0.88, "scores_out": {"noise": 0.55}}
    scores = comparison_scores(soup, ingredients, uniform)
    assert scores == {
        "greedy soup": {"in-distribution": 0.9, "noise": 0.6},
        "best ingredient (#1)": {"in-distribution": 0.85, "noise": 0.5},
        "uniform soup": {"in-distribution": 0.88, "noise": 0.55},
    }
    assert list(comparison_scores(soup, [])) == ["greedy soup"]


@pytest.mark.parametrize(
    "body",
    [
        [{"name": "x", "scope": "unit"}, {"name": "y", "angle_deg": 1.0}],
        {"units": [{"name": "x"}, {"name": "y", "angle_deg": 1.0}]},
    ],
)
def test_angles_without_degrees_are_dropped(body):
    assert normalize_angles(body).units == {"y": 1.0}

"""API answers (`contract.api` models) -> figure data: angles, summaries, curves, soups."""

from __future__ import annotations

from datetime import UTC, datetime

from contract.api import (
    AnglesPublic,
    JobPublic,
    MetricPublic,
    SoupPublic,
    StrategySummary,
)
from dashboard.shaping import degrees, metrics_table, summary_points, trajectory
from dashboard.soup_view import (
    comparison_scores,
    family,
    family_label,
    incompatibility,
    lineage_rows,
    same_recipe,
    trace_points,
)


def _row(name: str, deg: float, scope: str = "unit") -> dict:
    return {"scope": scope, "name": name, "angle_deg": deg}


def test_angles_final_and_per_epoch():
    body = AnglesPublic.model_validate(
        {
            "job_id": 1,
            "final": {
                "units": [_row("ATTN.0", 2.5)],
                "tensors": [_row("blocks.0.attn.qkv.weight", 3.0, "tensor")],
            },
            "epochs": [
                {"epoch": 2, "units": [_row("ATTN.0", 2.0)]},
                {"epoch": 1, "units": [_row("ATTN.0", 1.0)]},
            ],
        }
    )
    assert degrees(body.final.units) == {"ATTN.0": 2.5}
    assert degrees(body.final.tensors) == {"blocks.0.attn.qkv.weight": 3.0}
    assert trajectory(body) == {1: {"ATTN.0": 1.0}, 2: {"ATTN.0": 2.0}}
    assert list(trajectory(body)) == [1, 2]


def _summary(label: str, tuned: int | None, acc: float | None, std: float | None = None):
    return StrategySummary(
        label=label,
        strategy=label,
        params={},
        jobs=1,
        succeeded=1,
        test_acc_mean=acc,
        test_acc_std=std,
        heldout_acc_mean=None,
        shift_acc_mean={},
        tuned_params=tuned,
        tuned_fraction=None,
    )


def test_summary_points_skip_rows_without_accuracy():
    rows = [
        _summary("full", 100, 0.9, 0.01),
        _summary("attn_only", 40, None),
        _summary("probe", None, 0.5),
    ]
    assert summary_points(rows) == [
        {"strategy": "full", "tuned_params": 100, "accuracy": 0.9, "spread": 0.01}
    ]


def _metric(epoch: int, acc: float) -> MetricPublic:
    return MetricPublic(
        epoch=epoch,
        train_loss=1.0,
        heldout_acc=None,
        heldout_loss=None,
        test_acc=acc,
        test_loss=None,
        images_per_sec=None,
        extra={"x": 1},
    )


def test_metrics_table_sorts_epochs_and_keeps_the_curve_columns():
    rows = metrics_table([_metric(2, 0.2), _metric(1, 0.1)])
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "heldout_acc", "test_acc", "images_per_sec"}


def _job(i: int, **kw) -> JobPublic:
    fields = {
        "id": i,
        "kind": "finetune",
        "status": "succeeded",
        "experiment_id": None,
        "model": "m",
        "dataset": "d",
        "strategy": "full",
        "seed": 0,
        "config": {"model_overrides": {}, "pretrained": True},
        "tuned_params": None,
        "total_params": None,
        "progress": 1.0,
        "progress_info": {},
        "result": None,
        "error": None,
        "worker": None,
        "attempts": 1,
        "cancel_requested": False,
        "created_at": datetime.now(UTC),
        "started_at": None,
        "heartbeat_at": None,
        "finished_at": None,
    }
    return JobPublic.model_validate(fields | kw)


def _soup(i: int, method: str, **kw) -> SoupPublic:
    fields = {
        "id": i,
        "job_id": i,
        "status": "succeeded",
        "method": method,
        "ingredients": [1, 2],
        "shifts": [],
        "trace": [],
        "score_in": None,
        "scores_out": {},
        "error": None,
    }
    return SoupPublic.model_validate(fields | kw)


def test_incompatibility_names_the_rule_each_job_breaks():
    fam = family(_job(1))
    assert incompatibility(_job(2), fam) is None
    assert "only succeeded" in incompatibility(_job(3, status="failed"), fam)
    assert "model x differs" in incompatibility(_job(4, model="x"), fam)
    assert "dataset y differs" in incompatibility(_job(5, dataset="y"), fam)
    assert "only fine-tuning" in incompatibility(
        _job(6, kind="soup", config={"model_overrides": {}, "pretrained": True}), fam
    )
    other_base = _job(7, config={"model_overrides": {"depth": 2}, "pretrained": False})
    assert "overrides" in incompatibility(other_base, fam)
    assert family_label(fam) == "m / d"
    assert family_label(family(other_base)) == "m / d [depth=2; random init]"


def test_trace_points_follow_the_order_tried():
    soup = _soup(
        9,
        "a",
        trace=[
            {"order": 1, "ingredient": 1, "job_id": 4, "candidate_score": 0.7, "accepted": False},
            {"order": 0, "ingredient": 0, "job_id": 3, "candidate_score": 0.8, "accepted": True},
        ],
    )
    assert trace_points(soup) == [
        {"step": 0, "ingredient": 3, "score": 0.8, "accepted": True},
        {"step": 1, "ingredient": 4, "score": 0.7, "accepted": False},
    ]


def test_comparison_uses_the_best_held_out_ingredient_and_the_other_soups():
    soup = _soup(9, "a", score_in=0.9, scores_out={"noise": 0.6})
    ingredients = [
        _job(1, result={"heldout_acc": 0.8, "test_acc": 0.85, "shifts": {"noise": {"acc": 0.5}}}),
        _job(2, result={"heldout_acc": 0.7, "test_acc": 0.95, "shifts": {}}),
    ]
    other = _soup(10, "b", score_in=0.88, scores_out={"noise": 0.55})
    scores = comparison_scores(soup, ingredients, [other])
    assert scores == {
        "a soup": {"in-distribution": 0.9, "noise": 0.6},
        "best ingredient (#1)": {"in-distribution": 0.85, "noise": 0.5},
        "b soup (#10)": {"in-distribution": 0.88, "noise": 0.55},
    }
    assert list(comparison_scores(soup, [])) == ["a soup"]


def test_same_recipe_keeps_other_succeeded_soups_of_the_same_ingredients():
    soup = _soup(9, "a")
    others = [
        soup,
        _soup(10, "b", ingredients=[2, 1]),
        _soup(11, "b", ingredients=[1, 3]),
        _soup(12, "b", status="failed"),
    ]
    assert [o.id for o in same_recipe(soup, others)] == [10]


def test_lineage_lists_every_ingredient_and_whether_the_soup_kept_it():
    jobs = {
        1: _job(1, experiment_id=3, result={"heldout_acc": 0.5, "test_acc": 0.25}),
        2: _job(2, seed=None, result=None),
    }
    trace = [
        {"order": 0, "job_id": 1, "accepted": True},
        {"order": 1, "job_id": 2, "accepted": False},
    ]
    rows = lineage_rows([2, 1, 9], jobs, trace)
    assert [r["job"] for r in rows] == [2, 1, 9]
    assert rows[1] == {
        "job": 1,
        "strategy": "full",
        "seed": "0",
        "experiment": "#3",
        "held-out acc": "0.5000",
        "test acc": "0.2500",
        "in soup": "yes",
    }
    assert rows[0]["in soup"] == "no" and rows[0]["seed"] == "—" and rows[0]["test acc"] == "—"
    assert set(rows[2].values()) == {9, "—"}  # a job the page could not read
    assert {r["in soup"] for r in lineage_rows([1, 2], jobs)} == {"—"}  # not built yet

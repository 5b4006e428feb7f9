"""Every figure function and grid: data in (the API's models), figure out (traces, axes,
values). Unit maps and selections are pft's own, in the API's shapes."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest

from contract.api import AngleRow, SelectionPublic, UnitMapPublic
from contract.vocab import AngleScope
from dashboard import charts
from dashboard.layout import groups_of, tensor_grid, unit_grid
from pft.model_catalog import unit_map_for
from pft.strategies import resolve_strategy


@pytest.fixture(scope="module")
def micro() -> UnitMapPublic:
    return UnitMapPublic.model_validate(unit_map_for("pft/vit-micro", 10).to_dict())  # 4 blocks


@pytest.fixture(scope="module")
def swin() -> UnitMapPublic:
    um = unit_map_for("swin_tiny_patch4_window7_224.ms_in1k", 100)
    return UnitMapPublic.model_validate(um.to_dict())


def _unit_angles(depth: int) -> dict[str, float]:
    return {
        f"{k}.{i}": 10.0 * i + (1.5 if k == "FFN" else 0.5)
        for i in range(depth)
        for k in ("ATTN", "FFN")
    }


def _part(tensor: str) -> str:
    """What `pft.angles.tensor_part` answers (kept here: pft.angles imports torch)."""
    parts = ("qkv", "proj", "fc1", "fc2", "norm1", "norm2")
    return next((p for p in parts if f".{p}." in tensor), "other")


def _tensor_rows(um: UnitMapPublic, angle) -> list[AngleRow]:
    return [
        AngleRow(
            scope=AngleScope.TENSOR,
            name=t,
            angle_deg=angle(u, t),
            unit=u.name,
            group=u.group,
            block=u.block,
            part=_part(t),
        )
        for u in um.units
        for t in u.tensors
    ]


def _unit_rows(angles: dict[str, float], um: UnitMapPublic) -> list[AngleRow]:
    where = {u.name: u for u in um.units}
    return [
        AngleRow(
            scope=AngleScope.UNIT,
            name=n,
            angle_deg=v,
            unit=n,
            group=where[n].group,
            block=where[n].block,
        )
        for n, v in angles.items()
    ]


def test_selection_grid_marks_exactly_the_tuned_units(micro):
    um = unit_map_for("pft/vit-micro", 10)
    sels = [
        SelectionPublic.model_validate(resolve_strategy(um, s).to_dict())
        for s in ("attn_first_half", "ffn_only")
    ]
    fig = charts.unit_selection_grid(unit_grid(micro), sels)
    assert len(fig.data) == 2
    attn_first, ffn_only = fig.data
    assert list(attn_first.x) == ["ATTN", "FFN"]
    assert list(attn_first.y) == ["block 0", "block 1", "block 2", "block 3"]
    assert [list(r) for r in attn_first.z] == [[1, 0], [1, 0], [0, 0], [0, 0]]
    assert [list(r) for r in ffn_only.z] == [[0, 1]] * 4
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("attn_first_half<br>8.91k (17.0%)")
    assert fig.layout.yaxis.autorange == "reversed"
    json.loads(fig.to_json())  # serialisable for the browser


def test_selection_grid_with_no_strategy_is_an_empty_titled_figure(micro):
    fig = charts.unit_selection_grid(unit_grid(micro), [])
    assert len(fig.data) == 0
    assert fig.layout.annotations[0].text == "no strategy selected"


def test_unit_grid_columns_are_the_unit_maps_kinds(micro, swin):
    assert unit_grid(micro).columns == ("ATTN", "FFN")
    grid = unit_grid(swin)
    assert grid.columns == ("ATTN", "FFN") and grid.depth == swin.depth == 12
    last = swin.units[-1]
    assert grid.cells[last.name] == (last.block, 1)


def test_unit_grid_without_a_unit_map_places_rows_by_their_block_and_group(micro):
    rows = _unit_rows({"ATTN.0": 1.0, "FFN.2": 3.0}, micro)
    grid = unit_grid(None, rows)
    assert grid.columns == ("ATTN", "FFN") and grid.depth == 3
    fig = charts.unit_angle_heatmap({"ATTN.0": 1.0, "FFN.2": 3.0}, grid)
    assert [list(r) for r in fig.data[0].z] == [[1.0, None], [None, None], [None, 3.0]]


def test_pareto_front_keeps_only_undominated_points():
    pts = [
        {"strategy": "full", "tuned_params": 100, "accuracy": 0.90},
        {"strategy": "attn", "tuned_params": 30, "accuracy": 0.92},  # dominates full
        {"strategy": "probe", "tuned_params": 1, "accuracy": 0.80},
        {"strategy": "ffn", "tuned_params": 60, "accuracy": 0.93},
        {"strategy": "bad", "tuned_params": 50, "accuracy": 0.85},  # dominated by attn
    ]
    assert [pts[i]["strategy"] for i in charts.pareto_front(pts)] == ["probe", "attn", "ffn"]
    fig = charts.accuracy_vs_params(pts)
    scatter, front = fig.data
    assert list(scatter.x) == [100, 30, 1, 60, 50]
    assert list(front.text) == ["probe", "attn", "ffn"]
    assert list(front.y) == [0.80, 0.92, 0.93]
    assert fig.layout.xaxis.type == "log"


def test_accuracy_vs_params_draws_spread_as_error_bars():
    pts = [
        {"strategy": "a", "tuned_params": 5, "accuracy": 0.5, "spread": 0.02},
        {"strategy": "b", "tuned_params": 9, "accuracy": 0.6},
    ]
    err = charts.accuracy_vs_params(pts).data[0].error_y
    assert list(err.array) == [0.02, 0]


def test_training_curves_accuracy_left_loss_right():
    metrics = [
        {"epoch": e, "train_loss": 2.0 / e, "heldout_acc": 0.1 * e, "test_acc": 0.1 * e + 0.01}
        for e in (1, 2, 3)
    ]
    fig = charts.training_curves(metrics)
    names = [t.name for t in fig.data]
    assert names == ["held-out accuracy", "test accuracy", "train loss"]
    assert list(fig.data[1].y) == pytest.approx([0.11, 0.21, 0.31])
    assert fig.data[2].yaxis == "y2" and fig.data[0].yaxis == "y"


def test_training_curves_skip_missing_metrics():
    fig = charts.training_curves([{"epoch": 1, "train_loss": 1.0}])
    assert [t.name for t in fig.data] == ["train loss"]


def test_compare_curves_one_line_per_run():
    runs = {
        "full": [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}],
        "attn_only": [{"epoch": 1, "test_acc": 0.4}],
    }
    fig = charts.compare_curves(runs, "test_acc")
    assert [t.name for t in fig.data] == ["full", "attn_only"]
    assert list(fig.data[0].y) == [0.5, 0.6]


def test_unit_angle_heatmap_values_and_hover(micro):
    fig = charts.unit_angle_heatmap(_unit_angles(4), unit_grid(micro))
    (heat,) = fig.data
    assert isinstance(heat, go.Heatmap)
    assert list(heat.x) == ["ATTN", "FFN"]
    assert [list(r) for r in heat.z] == [[0.5, 1.5], [10.5, 11.5], [20.5, 21.5], [30.5, 31.5]]
    assert heat.text[2][1] == "21.50"
    assert "%{z:.3f}°" in heat.hovertemplate


def test_tensor_heatmap_columns_and_cells(micro):
    rows = _tensor_rows(micro, lambda u, t: u.block + (0.25 if t.endswith("bias") else 0.0))
    rows.append(AngleRow(scope=AngleScope.TENSOR, name="head.weight", angle_deg=99.0))
    grid = tensor_grid(rows, micro)
    # Parts in the order the model holds them (the rows' order): the way data flows in a block.
    assert grid.columns == ("norm1", "qkv", "proj", "norm2", "fc1", "fc2")
    fig = charts.tensor_angle_heatmap(rows, grid)
    (heat,) = fig.data
    assert list(heat.x) == list(grid.columns)
    assert len(heat.z) == 4
    assert list(heat.z[3]) == [3.0] * 6  # the weights' angle, not the biases'
    assert "blocks.3.attn.qkv.bias: 3.250°" in heat.customdata[3][1]
    assert "blocks.3.norm1.weight" in heat.customdata[3][0]
    assert 99.0 not in [v for row in heat.z for v in row]


def test_tensor_heatmap_shows_a_bias_only_where_a_cell_has_no_weight(micro):
    row = AngleRow(
        scope=AngleScope.TENSOR,
        name="blocks.0.attn.qkv.bias",
        angle_deg=40.0,
        unit="ATTN.0",
        group="ATTN",
        block=0,
        part="qkv",
    )
    fig = charts.tensor_angle_heatmap([row], tensor_grid([row]))
    assert [list(r) for r in fig.data[0].z] == [[40.0]]


def test_tensor_grid_takes_a_tensors_block_from_its_unit(swin):
    last = swin.units[-1]  # FFN of the last block, in stage 3
    rows = [
        r.model_copy(update={"block": None})
        for r in _tensor_rows(swin, lambda u, t: 7.0)
        if r.unit == last.name
    ]
    grid = tensor_grid(rows, swin)
    z = charts.tensor_angle_heatmap(rows, grid).data[0].z
    assert len(z) == swin.depth == 12
    assert list(z[11]) == [7.0] * len(grid.columns)


def test_difference_heatmap_is_b_minus_a_centred_on_zero(micro):
    a = _unit_angles(4)
    b = {n: v * 2 for n, v in a.items()}
    fig = charts.angle_difference_heatmap(a, b, unit_grid(micro), ("job 1", "job 2"))
    (heat,) = fig.data
    assert heat.zmid == 0
    assert [list(r) for r in heat.z][1] == [10.5, 11.5]
    assert "job 2 − job 1" in fig.layout.title.text


def test_trajectory_has_one_frame_per_epoch_and_a_slider(micro):
    per_epoch = {e: {n: v * e for n, v in _unit_angles(4).items()} for e in (1, 2, 3)}
    fig = charts.angle_trajectory(per_epoch, unit_grid(micro))
    assert [f.name for f in fig.frames] == ["1", "2", "3"]
    assert [list(r) for r in fig.frames[0].data[0].z][0] == [0.5, 1.5]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["1", "2", "3"]
    assert fig.layout.sliders[0].active == 2
    assert fig.data[0].zmax == pytest.approx(31.5 * 3)  # one scale for every frame
    assert [list(r) for r in fig.data[0].z] == [list(r) for r in fig.frames[2].data[0].z]


def test_ranked_bars_sort_per_group_and_highlight_selection(micro):
    angles = _unit_angles(4)
    fig = charts.ranked_angle_bars(angles, groups_of(micro), selected=["ATTN.3", "FFN.0"])
    attn, ffn = fig.data
    assert list(attn.y) == ["ATTN.3", "ATTN.2", "ATTN.1", "ATTN.0"]
    assert list(attn.x) == [30.5, 20.5, 10.5, 0.5]
    assert attn.marker.color[0] == charts.TUNED_COLOR
    assert attn.marker.color[1] != charts.TUNED_COLOR
    assert ffn.marker.color[3] == charts.TUNED_COLOR  # FFN.0 ranks last
    assert [a.text for a in fig.layout.annotations] == ["ATTN", "FFN"]


def test_ranked_bars_one_panel_per_swin_group(swin):
    angles = {u.name: float(u.block) for u in swin.units}
    fig = charts.ranked_angle_bars(angles, groups_of(swin))
    assert len(fig.data) == 8  # 4 stages x ATTN/FFN


def test_groups_without_a_unit_map_come_from_the_rows_in_depth_order(micro):
    rows = _unit_rows({"FFN.1": 1.0, "ATTN.1": 2.0, "ATTN.0": 3.0}, micro)
    assert groups_of(None, rows) == {"ATTN": ["ATTN.0", "ATTN.1"], "FFN": ["FFN.1"]}


def test_soup_trace_splits_accepted_and_rejected():
    trace = [
        {"step": 0, "ingredient": 5, "score": 0.80, "accepted": True},
        {"step": 1, "ingredient": 3, "score": 0.78, "accepted": False},
        {"step": 2, "ingredient": 4, "score": 0.83, "accepted": True},
    ]
    fig = charts.soup_trace(trace)
    accepted, rejected, line = fig.data
    assert list(accepted.x) == [0, 2] and list(accepted.y) == [0.80, 0.83]
    assert list(rejected.text) == ["job 3"]
    assert list(line.y) == [0.80, 0.80, 0.83]


def test_soup_comparison_groups_bars_by_evaluation_set():
    scores = {
        "a soup": {"in-distribution": 0.9, "gaussian_noise": 0.7},
        "best ingredient": {"in-distribution": 0.88, "gaussian_noise": 0.6},
        "b soup": {"in-distribution": 0.86},
    }
    fig = charts.soup_comparison(scores)
    assert fig.layout.barmode == "group"
    assert [t.name for t in fig.data] == list(scores)
    assert list(fig.data[0].x) == ["in-distribution", "gaussian_noise"]
    assert list(fig.data[2].y) == [0.86, None]

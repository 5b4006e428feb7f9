"""The Results page's parallel coordinates: jobs -> configurations (1,000 jobs become a few
lines), the brush filter, the figure, and the offline component folder it is served from."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import pytest

from contract.api import JobPublic, UnitMapPublic
from dashboard.charts import configurations_parcoords
from dashboard.components import parcoords as component
from dashboard.shaping import (
    LOWEST_BLOCK,
    Axis,
    brushed,
    configurations,
    job_points,
    parcoords_axes,
)
from pft.model_catalog import unit_map_for


@pytest.fixture(scope="module")
def micro() -> UnitMapPublic:
    return UnitMapPublic.model_validate(unit_map_for("pft/vit-micro", 4).to_dict())  # 4 blocks


# (label, units tuned, tuned params); the lab's strategies on a 4-block ViT
RECIPES = [
    ("full", ["ATTN.0", "FFN.0", "ATTN.1", "FFN.1", "ATTN.2", "FFN.2", "ATTN.3", "FFN.3"], 9000),
    ("attn_only", ["ATTN.0", "ATTN.1", "ATTN.2", "ATTN.3"], 3000),
    ("ffn_last_half", ["FFN.2", "FFN.3"], 2500),
    ("linear_probe", [], 100),
    ("custom(units=ATTN.1,FFN.3)", ["ATTN.1", "FFN.3"], 1500),
]
LRS = [1e-4, 1e-3, 1e-2, 3e-2]
EPOCHS = [1, 2]
SEEDS = 25  # 5 recipes x 4 lrs x 2 epochs x 25 seeds = 1,000 jobs


def _job(i: int, units: list[str], lr: float, epochs: int, seed: int, **kw) -> JobPublic:
    fields = {
        "id": i,
        "kind": "finetune",
        "status": "succeeded",
        "experiment_id": 1,
        "model": "pft/vit-micro",
        "dataset": "synthetic",
        "strategy": "s",
        "seed": seed,
        "config": {"hparams": {"lr": lr, "epochs": epochs, "seed": seed, "batch_size": 32}},
        "tuned_params": None,
        "total_params": 9000,
        "progress": 1.0,
        "progress_info": {},
        "result": {"strategy": {"units": units}, "num_classes": 4},
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


def _acc(r: int, lr: float, epochs: int, seed: int) -> float:
    return round(0.5 + 0.05 * r + 0.01 * epochs - 0.1 * lr + 0.001 * (seed % 5), 6)


def _sweep() -> tuple[list[JobPublic], list[dict]]:
    jobs, rows = [], []
    for r, (label, units, tuned) in enumerate(RECIPES):
        for lr in LRS:
            for epochs in EPOCHS:
                for seed in range(SEEDS):
                    i = len(jobs) + 1
                    jobs.append(_job(i, units, lr, epochs, seed))
                    acc = _acc(r, lr, epochs, seed)
                    rows.append(
                        {
                            "job_id": i,
                            "label": label,
                            "tuned_params": tuned,
                            "heldout_acc": acc + 0.01,
                            "test_acc": acc,
                            "status": "succeeded",
                        }
                    )
    return jobs, rows


def test_a_thousand_jobs_become_one_line_per_configuration(micro):
    jobs, rows = _sweep()
    assert len(jobs) == 1000
    points = job_points(jobs, rows, micro)
    assert len(points) == 1000
    configs = configurations(points)
    assert len(configs) == len(RECIPES) * len(LRS) * len(EPOCHS) == 40
    assert sum(c["n"] for c in configs) == 1000 and {c["n"] for c in configs} == {SEEDS}
    first = configs[0]  # full, lr 1e-4, 1 epoch: first seen
    assert (first["label"], first["lr"], first["epochs"]) == ("full", 1e-4, 1)
    assert first["hparams"] == {"lr": 1e-4, "epochs": 1, "batch_size": 32}  # no seed
    expected = sum(_acc(0, 1e-4, 1, s) for s in range(SEEDS)) / SEEDS
    assert first["test_acc"] == pytest.approx(expected)
    assert first["heldout_acc"] == pytest.approx(expected + 0.01)
    assert first["job_ids"] == list(range(1, SEEDS + 1))
    by_label = {c["label"]: c for c in configs}
    assert (by_label["full"]["units:ATTN"], by_label["full"]["units:FFN"]) == (4, 4)
    assert (by_label["attn_only"]["units:ATTN"], by_label["attn_only"]["units:FFN"]) == (4, 0)
    assert by_label["ffn_last_half"][LOWEST_BLOCK] == 2
    assert by_label["custom(units=ATTN.1,FFN.3)"][LOWEST_BLOCK] == 1
    assert by_label["linear_probe"][LOWEST_BLOCK] == 4  # nothing tuned below the head: depth
    assert by_label["linear_probe"]["tuned_params"] == 100
    assert [c["strategy_index"] for c in configs[:: len(LRS) * len(EPOCHS)]] == [0, 1, 2, 3, 4]


def test_points_skip_unfinished_jobs_and_rows_without_accuracy(micro):
    jobs = [
        _job(1, ["ATTN.0"], 1e-3, 1, 0),
        _job(2, ["ATTN.0"], 1e-3, 1, 1, status="running", result=None),
        _job(3, ["ATTN.0"], 1e-3, 1, 2),
        _job(4, [], 1e-3, 1, 0, kind="soup"),
    ]
    rows = [
        {"job_id": 1, "label": "a", "tuned_params": 10, "heldout_acc": 0.5, "test_acc": 0.4},
        {"job_id": 2, "label": "a", "tuned_params": 10, "heldout_acc": None, "test_acc": None},
        {"job_id": 3, "label": "a", "tuned_params": 10, "heldout_acc": None, "test_acc": None},
        {"job_id": 4, "label": "soup", "tuned_params": 10, "heldout_acc": 0.9, "test_acc": 0.9},
        {"job_id": 5, "label": "gone", "tuned_params": 10, "heldout_acc": 0.9, "test_acc": 0.9},
    ]
    assert [p["job_id"] for p in job_points(jobs, rows, micro)] == [1]
    # Without a unit map: no per-group axes and no lowest block.
    (point,) = job_points(jobs, rows, None)
    assert not any(k.startswith("units:") for k in point) and LOWEST_BLOCK not in point


def test_axes_follow_the_configurations(micro):
    jobs, rows = _sweep()
    configs = configurations(job_points(jobs, rows, micro))
    axes = parcoords_axes(configs)
    assert [a.label for a in axes] == [
        "strategy",
        "ATTN units",
        "FFN units",
        LOWEST_BLOCK,
        "learning rate",
        "epochs",
        "tuned params",
        "held-out acc",
        "test acc",
    ]
    assert axes[0].ticks == tuple(label for label, _, _ in RECIPES)
    lr = axes[4]
    assert lr.log and lr.value({"lr": 1e-3}) == pytest.approx(-3.0)
    assert lr.value({"lr": None}) is None and lr.value({"lr": 0.0}) is None
    no_map = configurations(job_points(jobs, rows, None))
    assert "ATTN units" not in [a.label for a in parcoords_axes(no_map)]


def test_brushing_keeps_configurations_inside_every_range(micro):
    jobs, rows = _sweep()
    configs = configurations(job_points(jobs, rows, micro))
    axes = parcoords_axes(configs)
    assert brushed(configs, axes, {}) == configs
    # learning rate is brushed in log10 units: [-3.5, -1.8] holds 1e-3 and 1e-2, not 3e-2
    kept = brushed(configs, axes, {"learning rate": [[-3.5, -1.8]]})
    assert {c["lr"] for c in kept} == {1e-3, 1e-2} and len(kept) == 20
    both = brushed(configs, axes, {"learning rate": [-3.5, -1.8], "ATTN units": [[3.5, 4.5]]})
    assert {c["label"] for c in both} == {"full", "attn_only"} and len(both) == 8
    # Two ranges on one axis: a row in either passes; bounds are inclusive.
    either = brushed(configs, axes, {"epochs": [[0.9, 1.0], [5, 6]]})
    assert {c["epochs"] for c in either} == {1}
    assert brushed(configs, axes, {"test acc": [[2.0, 3.0]]}) == []
    # A brush of an axis this figure does not have, or an empty one, filters nothing.
    assert brushed(configs, axes, {"gone": [[0, 1]], "epochs": []}) == configs
    # A row without a value on a brushed axis is outside it.
    holes = [{**configs[0], "lr": None}, configs[1]]
    assert brushed(holes, axes, {"learning rate": [[-10, 10]]}) == [configs[1]]


def test_figure_has_one_dimension_per_axis_in_axis_units(micro):
    jobs, rows = _sweep()
    configs = configurations(job_points(jobs, rows, micro))
    axes = parcoords_axes(configs)
    fig = configurations_parcoords(configs, axes)
    (trace,) = fig.data
    assert trace.type == "parcoords"
    dims = {d.label: d for d in trace.dimensions}
    assert list(dims) == [a.label for a in axes]
    assert list(dims["learning rate"].values) == [math.log10(c["lr"]) for c in configs]
    assert list(dims["learning rate"].ticktext) == ["0.0001", "0.001", "0.01", "0.03"]
    assert list(dims["strategy"].ticktext) == [label for label, _, _ in RECIPES]
    assert list(dims["test acc"].values) == [c["test_acc"] for c in configs]
    assert list(trace.line.color) == [c["test_acc"] for c in configs]
    assert "40" in fig.layout.title.text


def test_a_constant_axis_is_centred():
    configs = [{"label": "a", "strategy_index": 0, "epochs": 3, "test_acc": 0.5}]
    axes = [Axis("strategy_index", "strategy", ticks=("a",)), Axis("epochs", "epochs")]
    dims = configurations_parcoords(configs, axes).data[0].dimensions
    assert list(dims[1].range) == [2.5, 3.5] and list(dims[0].range) == [-0.5, 0.5]


def test_component_folder_is_built_offline_from_the_installed_plotly(tmp_path):
    folder = component.build_folder([tmp_path / "cache"])
    assert folder.parent == tmp_path / "cache"
    page = (folder / "index.html").read_text()
    assert (folder / "plotly.min.js").read_bytes() == component.PLOTLY_JS.read_bytes()
    assert page == component.PAGE.read_text()
    assert re.findall(r"""src=["']([^"']+)""", page) == ["./plotly.min.js"]  # no CDN
    assert "http://" not in page and "https://" not in page
    for message in ("componentReady", "setComponentValue", "setFrameHeight", "plotly_restyle"):
        assert message in page
    assert component.build_folder([tmp_path / "cache"]) == folder  # reused, not copied again
    assert len(list((tmp_path / "cache").iterdir())) == 1  # no half-written copy left


def test_component_folder_falls_back_to_the_next_cache(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    folder = component.build_folder([blocked / "cache", tmp_path / "second"])
    assert folder.parent == tmp_path / "second"
    with pytest.raises(OSError, match="cannot prepare the parallel-coordinates component"):
        component.build_folder([blocked / "cache"])

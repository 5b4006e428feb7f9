"""The Soups page's mixing-weight heatmap and lineage graph: data from the API's models
(`dashboard.soup_view`) and their figures (`dashboard.charts`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contract.api import JobPublic, SoupPublic
from dashboard.charts import (
    ACCEPTED_COLOR,
    REJECTED_COLOR,
    mixing_heatmap,
    soup_lineage_graph,
)
from dashboard.soup_view import lineage_graph, mixing_matrix, mixing_notes

TOTAL = 1000


def _job(i: int, units: list[str], tuned: int, **kw) -> JobPublic:
    fields = {
        "id": i,
        "kind": "finetune",
        "status": "succeeded",
        "experiment_id": 1,
        "model": "m",
        "dataset": "d",
        "strategy": f"s{i}",
        "seed": i % 2,
        "config": {"model_overrides": {}, "pretrained": True},
        "tuned_params": tuned,
        "total_params": TOTAL,
        "progress": 1.0,
        "progress_info": {},
        "result": {"strategy": {"units": units}, "heldout_acc": 0.5 + i / 100, "test_acc": 0.4},
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


def _soup(ingredients: list[int], mixing: dict, trace: list | None = None) -> SoupPublic:
    return SoupPublic(
        id=9,
        job_id=9,
        status="succeeded",
        method="some_merge",
        ingredients=ingredients,
        shifts=[],
        trace=trace or [],
        score_in=0.6,
        scores_out={},
        error=None,
        mixing=mixing,
    )


# Three ingredients: a full run (every unit, the stem and the final norm), one that tuned
# ATTN.0 and FFN.1, one that tuned ATTN.0 only; all tuned the head.
FULL = ["ATTN.0", "FFN.0", "ATTN.1", "FFN.1"]
JOBS = {
    1: _job(1, FULL, TOTAL),
    2: _job(2, ["ATTN.0", "FFN.1"], 300),
    3: _job(3, ["ATTN.0"], 200),
}
MIXING = {
    "weight": "t",
    "single_tuner": "keep",
    "units": {
        "stem": {"weight": 1.0, "ingredients": 1, "cos": None},
        "ATTN.0": {"weight": 0.8, "ingredients": 3, "cos": 0.6},
        "FFN.0": {"weight": 1.0, "ingredients": 1, "cos": None},
        "ATTN.1": {"weight": 1.0, "ingredients": 1, "cos": None},
        "FFN.1": {"weight": 0.25, "ingredients": 2, "cos": 0.1},
        "final_norm": {"weight": 1.0, "ingredients": 1, "cos": None},
        "head": {"weight": 0.5, "ingredients": 3, "cos": 0.4},
    },
}


def test_mixing_matrix_puts_each_weight_where_an_ingredient_tuned_the_unit():
    m = mixing_matrix(_soup([1, 2, 3], MIXING), JOBS)
    assert m["weight"] == "t" and m["ingredients"] == [1, 2, 3]
    assert m["units"] == list(MIXING["units"])  # depth order, as the merge reported them
    rows = dict(zip(m["units"], m["z"], strict=True))
    assert rows["ATTN.0"] == [0.8, 0.8, 0.8]
    assert rows["FFN.1"] == [0.25, 0.25, None]
    assert rows["FFN.0"] == rows["ATTN.1"] == [1.0, None, None]
    # Outside the units: the head by everyone, the stem and final norm by the full run only.
    assert rows["head"] == [0.5, 0.5, 0.5]
    assert rows["stem"] == rows["final_norm"] == [1.0, None, None]
    assert m["tuners"] == [1, 3, 1, 1, 2, 1, 3]
    # Every row has as many filled cells as the merge says ingredients tuned it.
    assert [sum(v is not None for v in row) for row in m["z"]] == m["tuners"]


def test_no_matrix_for_a_soup_without_mixing_weights():
    assert mixing_matrix(_soup([1, 2], {}), JOBS) is None
    assert mixing_matrix(_soup([1, 2], {"weight": "scale", "units": {}}), JOBS) is None


def test_mixing_notes_list_the_methods_own_scalars():
    mixing = {"weight": "scale", "scale": 0.4, "grid": [{"scale": 0.4}], "units": {}}
    assert mixing_notes(_soup([1, 2], mixing)) == "scale = 0.4"
    assert mixing_notes(_soup([1, 2], MIXING)) == "single_tuner = keep"
    assert mixing_notes(_soup([1, 2], {})) == ""


def test_mixing_heatmap_draws_units_by_ingredients():
    m = mixing_matrix(_soup([1, 2, 3], MIXING), JOBS)
    fig = mixing_heatmap(m)
    (heat,) = fig.data
    assert heat.type == "heatmap"
    assert list(heat.y) == list(MIXING["units"])
    assert list(heat.x) == ["job 1", "job 2", "job 3"]
    assert [list(r) for r in heat.z] == m["z"]
    assert fig.layout.yaxis.autorange == "reversed"  # the stem on top, the head at the bottom
    assert heat.text[4][1] == "FFN.1 · job 2: t 0.25<br>tuned by 2 of 3 ingredients"
    assert heat.text[4][2].startswith("FFN.1 · job 3: t —")
    assert "(t)" in fig.layout.title.text


def _soup_job(ingredients: list[int], status: str = "succeeded") -> JobPublic:
    return _job(
        9,
        [],
        0,
        kind="soup",
        status=status,
        strategy=None,
        seed=None,
        config={"method": "some_merge", "ingredients": ingredients, "params": {}, "shifts": []},
    )


def test_lineage_graph_links_every_ingredient_to_the_soup():
    trace = [
        {"order": 0, "ingredient": 1, "job_id": 2, "accepted": True},
        {"order": 1, "ingredient": 0, "job_id": 1, "accepted": False},
    ]
    graph = lineage_graph(_soup_job([1, 2, 3]), JOBS, trace)
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert [n["kind"] for n in graph["nodes"]] == ["ingredient"] * 3 + ["soup"]
    assert nodes[1]["label"] == "#1 s1 · seed 1" and nodes[9]["label"] == "soup #9 (some_merge)"
    assert [nodes[i]["y"] for i in (1, 2, 3)] == [2.0, 1.0, 0.0]  # in the soup's order, top down
    assert nodes[9]["x"] > nodes[1]["x"] and nodes[9]["y"] == 1.0
    assert "held-out 0.5200" in nodes[2]["hover"]
    assert graph["edges"] == [
        {"source": 1, "target": 9, "kept": False},
        {"source": 2, "target": 9, "kept": True},
        {"source": 3, "target": 9, "kept": None},  # not in the trace: no verdict
    ]


def test_lineage_graph_of_an_ingredient_the_api_no_longer_has():
    graph = lineage_graph(_soup_job([1, 7], status="queued"), JOBS)
    assert graph["nodes"][1]["label"] == "#7 —"
    assert {e["kept"] for e in graph["edges"]} == {None}


def test_lineage_figure_draws_edges_by_verdict_and_labels_nodes():
    trace = [{"job_id": 2, "accepted": True}, {"job_id": 1, "accepted": False}]
    fig = soup_lineage_graph(lineage_graph(_soup_job([1, 2, 3]), JOBS, trace))
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"kept", "left out", "ingredient of", "ingredients", "soup"}
    assert by_name["kept"].line.color == ACCEPTED_COLOR
    assert by_name["left out"].line.color == REJECTED_COLOR
    # job 2 sits at y=1, the soup at (1, 1): one segment, then a break.
    assert list(by_name["kept"].x) == [0.0, 1.0, None]
    assert list(by_name["kept"].y) == [1.0, 1.0, None]
    assert list(by_name["ingredients"].text) == [
        "#1 s1 · seed 1",
        "#2 s2 · seed 0",
        "#3 s3 · seed 1",
    ]
    assert list(by_name["soup"].text) == ["soup #9 (some_merge)"]


@pytest.mark.parametrize("n", [2, 12])
def test_lineage_figure_grows_with_its_ingredients(n):
    jobs = {i: _job(i, ["ATTN.0"], 100) for i in range(1, n + 1)}
    fig = soup_lineage_graph(lineage_graph(_soup_job(list(jobs)), jobs))
    assert len(fig.data[-2].x) == n
    assert fig.layout.height >= 80 + 40 * n

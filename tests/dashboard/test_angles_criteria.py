"""The Angles page beyond the fine-tuned angle (Streamlit AppTest against the real test backend
of conftest.py, rank jobs run by the real engine): the criterion selector shows a rank job's
per-unit scores with the angle charts, starts a rank job and follows its progress; the
criteria tab draws what ``GET /criteria/compare`` answers."""

from __future__ import annotations

import pytest
import streamlit as st

from contract.api import CriteriaComparison
from dashboard.criteria_view import EMPTY, correlation_matrix, overlap_rows
from tests.dashboard.conftest import (
    DATASET,
    MODEL,
    Backend,
    Engine,
    _ok,
    api,
    claim,
    heartbeat,
)
from tests.dashboard.test_pages import assert_clean, figure, frame, page

pytestmark = pytest.mark.timeout(300)
FISHER, GRADIENT_NORM = "fisher", "gradient_norm"


def submit_rank(backend: Backend, criterion: str, **body) -> dict:
    with backend.client() as c:
        r = c.post(
            "/jobs",
            json={
                "kind": "rank",
                "model": MODEL,
                "dataset": DATASET,
                "criterion": criterion,
                "batches": 2,
                **body,
            },
        )
    return _ok(r).json()


def finished_rank(backend: Backend, engine: Engine, criterion: str, **body) -> dict:
    """A rank job the engine ran and reported through the worker routes; as the API holds it."""
    job_id = submit_rank(backend, criterion, **body)["id"]
    engine.finish(backend, job_id)
    job = api(backend, f"/jobs/{job_id}")
    assert job["status"] == "succeeded", job
    return job


def test_a_rank_jobs_scores_are_shown_like_angles_and_one_starts_from_the_page(
    dashboard_env: Backend, engine: Engine
):
    job = finished_rank(dashboard_env, engine, FISHER, seed=4)
    scores = {u["name"]: u["score"] for u in job["result"]["units"]}
    unit_map = api(dashboard_env, f"/models/{MODEL}/units", num_classes=4)["unit_map"]

    at = page("angles").run()
    assert at.selectbox(key="angles-criterion").value != FISHER  # the fine-tuned angle first
    at.selectbox(key="angles-criterion").set_value(FISHER).run()
    assert_clean(at, dashboard_env)
    at.selectbox(key="angles-rank-job").set_value(job["id"]).run()
    assert_clean(at, dashboard_env)

    heat = figure(at, "angles-score-heatmap")
    kinds = heat["data"][0]["x"]
    assert kinds == ["ATTN", "FFN"] and heat["data"][0]["y"] == [f"block {i}" for i in range(4)]
    expected = [[None] * len(kinds) for _ in range(unit_map["depth"])]
    for u in unit_map["units"]:
        expected[u["block"]][kinds.index(u["kind"])] = scores[u["name"]]
    assert heat["data"][0]["z"] == expected
    assert heat["layout"]["title"]["text"] == f"{FISHER} per unit, job {job['id']}"
    assert "°" not in heat["data"][0]["hovertemplate"]

    bars = {t["name"]: t for t in figure(at, "angles-score-ranked")["data"]}
    for group, units in unit_map["groups"].items():
        ranked = sorted(units, key=lambda n: scores[n], reverse=True)
        assert bars[group]["y"] == ranked
        assert bars[group]["x"] == [scores[n] for n in ranked]

    # Start another from the page: the request carries the widgets' values.
    at.selectbox(key="rank-model").set_value(MODEL)
    at.selectbox(key="rank-dataset").set_value(DATASET)
    at.number_input(key="rank-seed").set_value(2)
    at.number_input(key=f"rank-{FISHER}-batches").set_value(3).run()
    assert not at.button(key="launch-rank").disabled
    at.button(key="launch-rank").click().run()
    assert_clean(at, dashboard_env)
    newest = api(dashboard_env, "/jobs", limit=1, kind="rank")["items"][0]
    assert newest["id"] != job["id"] and newest["status"] == "queued"
    assert newest["config"]["criterion"] == FISHER and newest["config"]["seed"] == 2
    assert newest["config"]["params"]["batches"] == 3
    assert any(f"Rank job {newest['id']}" in s.value for s in at.success)

    # Its progress follows the worker's heartbeats.
    token = claim(dashboard_env, newest["id"])["claim"]
    heartbeat(dashboard_env, newest["id"], token, 0.5, step=1, total_steps=3)
    st.cache_data.clear()
    at.run()
    assert_clean(at, dashboard_env)
    (bar,) = [p for p in at.get("progress") if f"#{newest['id']} " in p.proto.text]
    assert bar.value == 50 and "running" in bar.proto.text

    # A bad parameter blocks the button with the field named.
    at.number_input(key=f"rank-{FISHER}-batches").set_value(0).run()
    assert at.button(key="launch-rank").disabled
    assert any("batches" in e.value for e in at.error)


def test_the_criteria_tab_shows_the_correlation_matrix_overlaps_and_cost(
    dashboard_env: Backend, engine: Engine
):
    finished_rank(dashboard_env, engine, FISHER)
    finished_rank(dashboard_env, engine, GRADIENT_NORM)
    served = api(dashboard_env, "/criteria/compare", model=MODEL, dataset=DATASET)
    names = [c["criterion"] for c in served["criteria"]]
    assert {FISHER, GRADIENT_NORM} <= set(names)

    at = page("angles").run()
    at.selectbox(key="criteria-run").set_value(f"{MODEL} / {DATASET}").run()
    assert_clean(at, dashboard_env)
    heat = figure(at, "criteria-spearman")["data"][0]
    assert heat["x"] == names and heat["y"] == names
    index = {n: i for i, n in enumerate(names)}
    for i in range(len(names)):
        assert heat["z"][i][i] == 1.0
    for p in served["pairs"]:
        i, j = index[p["a"]], index[p["b"]]
        assert heat["z"][i][j] == heat["z"][j][i] == p["spearman"]
    assert (heat["zmin"], heat["zmax"]) == (-1, 1)

    k = served["k"]
    overlap = frame(at, "criteria-overlap")
    assert list(overlap["criterion A"]) == [p["a"] for p in served["pairs"]]
    assert list(overlap["criterion B"]) == [p["b"] for p in served["pairs"]]
    assert list(overlap["spearman"]) == [f"{p['spearman']:.4f}" for p in served["pairs"]]
    assert list(overlap[f"top-{k} overlap"]) == [
        round(p["topk_overlap"], 4) for p in served["pairs"]
    ]
    cost = frame(at, "criteria-cost")
    assert list(cost["criterion"]) == names
    assert list(cost["job"]) == [f"#{c['job_id']}" for c in served["criteria"]]
    assert list(cost["seconds"]) == [round(served["cost"][n], 3) for n in names]

    # Another k: the table follows the API's answer for it.
    at.number_input(key="criteria-k").set_value(1).run()
    assert_clean(at, dashboard_env)
    one = api(dashboard_env, "/criteria/compare", model=MODEL, dataset=DATASET, k=1)
    assert list(frame(at, "criteria-overlap")["top-1 overlap"]) == [
        round(p["topk_overlap"], 4) for p in one["pairs"]
    ]


def test_the_matrix_is_symmetric_and_an_undefined_rho_stays_empty():
    units = [{"name": "ATTN.0", "group": "ATTN", "score": 1.0}]
    comparison = CriteriaComparison.model_validate(
        {
            "model": MODEL,
            "dataset": DATASET,
            "k": 1,
            "order": "largest",
            "criteria": [
                {"criterion": c, "job_id": i, "units": units, "seconds": 1.0}
                for i, c in enumerate(("a", "b", "c"), start=1)
            ],
            "pairs": [
                {"a": "a", "b": "b", "spearman": 0.5, "topk_overlap": 1.0},
                {"a": "a", "b": "c", "spearman": None, "topk_overlap": 0.0},
                {"a": "b", "b": "c", "spearman": -0.25, "topk_overlap": 0.5},
            ],
            "cost": {"a": 1.0, "b": 1.0, "c": 1.0},
        }
    )
    names, z = correlation_matrix(comparison)
    assert names == ["a", "b", "c"]
    assert z == [[1.0, 0.5, None], [0.5, 1.0, -0.25], [None, -0.25, 1.0]]
    assert [r["spearman"] for r in overlap_rows(comparison)] == ["0.5000", EMPTY, "-0.2500"]

"""Every page under Streamlit's AppTest against a real backend (see conftest.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import (
    Backend,
    finish_job,
    finish_soup,
    submit_experiment,
    unit_angles,
)

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "app_pages"
pytestmark = pytest.mark.timeout(120)


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=30)


def figure(at: AppTest, key: str) -> dict:
    (el,) = [e for e in at.get("plotly_chart") if e.key == key]
    return json.loads(el.proto.spec)


def frame(at: AppTest, key: str):
    """The dataframe inside the keyed container ``key`` (see dashboard.ui.table)."""
    (block,) = [n for n in _walk(at._tree) if getattr(n, "key", None) == key]
    (frame,) = [n for n in _walk(block) if type(n).__name__ == "Dataframe"]
    return frame.value


def keys(at: AppTest, kind: str) -> list[str]:
    return [e.key for e in at.get(kind)]


def _walk(node) -> Iterator:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)


def page_text(at: AppTest) -> str:
    """Everything the page sends to the browser, as text."""
    return "\n".join(str(n.proto) for n in _walk(at._tree) if getattr(n, "proto", None))


def assert_clean(at: AppTest, backend: Backend) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert backend.token not in page_text(at)


def job(backend: Backend, job_id: int) -> dict:
    with backend.client() as c:
        return c.get(f"/jobs/{job_id}").json()


def test_new_experiment_previews_units_and_launches_jobs(dashboard_env: Backend):
    at = page("new_experiment").run()
    assert_clean(at, dashboard_env)
    at.selectbox(key="model").set_value("pft/vit-micro")
    at.selectbox(key="dataset").set_value("synthetic")
    at.multiselect(key="strategies").set_value(["full", "attn_first_half"])
    at.text_input(key="seeds").set_value("0, 1")
    at.number_input(key="hp-epochs").set_value(1)
    at.run()
    assert_clean(at, dashboard_env)
    grid = figure(at, "unit-grid")
    assert [t["name"] for t in grid["data"]] == ["full", "attn_first_half"]
    assert grid["data"][0]["z"] == [[1.0, 1.0]] * 4
    assert grid["data"][1]["z"] == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]

    at.button(key="submit-experiment").click().run()
    assert_clean(at, dashboard_env)
    created = frame(at, "submitted-jobs")
    assert len(created) == 4  # 2 strategies x 2 seeds
    assert sorted(created["strategy"]) == ["attn_first_half"] * 2 + ["full"] * 2
    experiment_id = at.session_state["last_experiment"]
    with dashboard_env.client() as c:
        detail = c.get(f"/experiments/{experiment_id}").json()
    assert sorted(detail["job_ids"]) == sorted(created["job"])
    assert job(dashboard_env, int(created["job"][0]))["config"]["hparams"]["epochs"] == 1
    import redis

    from tests.dashboard.conftest import REDIS_URL

    # Sent (right after the API answered) to this backend's own queue, where no worker listens.
    broker = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 15
    while broker.llen(dashboard_env.queue) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert broker.llen(dashboard_env.queue) == 4


def test_new_experiment_shows_the_backends_message(dashboard_env: Backend):
    at = page("new_experiment").run()
    at.selectbox(key="model").set_value("other timm model…").run()
    at.text_input(key="timm-model").set_value("vit_not_a_model_xyz").run()
    assert_clean(at, dashboard_env)
    assert any("vit_not_a_model_xyz" in i.value for i in at.info)  # no unit preview
    at.button(key="submit-experiment").click().run()
    assert_clean(at, dashboard_env)
    (error,) = at.error
    assert "the backend refused the experiment" in error.value
    assert "model" in error.value and "unknown model 'vit_not_a_model_xyz'" in error.value
    assert "Traceback" not in error.value


def test_new_experiment_angle_topk_needs_a_finished_full_job(dashboard_env: Backend):
    created = submit_experiment(dashboard_env, [{"name": "full"}], dataset="digits")
    ref = created["jobs"][0]["id"]
    at = page("new_experiment").run()
    at.selectbox(key="model").set_value("pft/vit-micro")
    at.selectbox(key="dataset").set_value("digits")
    at.multiselect(key="strategies").set_value(["angle_topk"]).run()
    assert any("No finished full fine-tuning job" in i.value for i in at.info)
    finish_job(dashboard_env, ref)
    st.cache_data.clear()  # the page caches job lists for a refresh period
    at = page("new_experiment").run()
    at.selectbox(key="model").set_value("pft/vit-micro")
    at.selectbox(key="dataset").set_value("digits")
    at.multiselect(key="strategies").set_value(["angle_topk"]).run()
    at.number_input(key="topk-k").set_value(1)
    at.radio(key="topk-order").set_value("largest").run()
    assert_clean(at, dashboard_env)
    assert not at.warning, [w.value for w in at.warning]
    grid = figure(at, "unit-grid")
    assert grid["data"][0]["z"] == [[0.0, 0.0]] * 3 + [[1.0, 1.0]]  # block 3 has the largest
    at.button(key="submit-experiment").click().run()
    new = frame(at, "submitted-jobs")
    config = job(dashboard_env, int(new["job"][0]))["config"]
    assert config["strategy"]["name"] == "angle_topk"
    assert config["strategy"]["reference_job"] == ref


def test_jobs_page_lists_cancels_and_retries(dashboard_env: Backend):
    created = submit_experiment(dashboard_env, [{"name": "ffn_only"}])
    job_id = created["jobs"][0]["id"]
    experiment_id = created["experiment"]["id"]
    at = page("jobs").run()
    assert_clean(at, dashboard_env)
    at.selectbox(key="jobs-experiment").set_value(experiment_id).run()
    rows = frame(at, "jobs-table")
    assert list(rows["id"]) == [job_id]
    assert list(rows["status"]) == ["queued"]
    at.selectbox(key="job-select").set_value(job_id).run()
    assert not at.button(key="cancel-job").disabled
    assert at.button(key="retry-job").disabled
    at.button(key="cancel-job").click().run()
    assert_clean(at, dashboard_env)
    assert job(dashboard_env, job_id)["status"] == "cancelled"
    assert any(f"Cancellation of job {job_id}" in s.value for s in at.success)
    assert list(frame(at, "jobs-table")["status"]) == ["cancelled"]
    at.button(key="retry-job").click().run()
    assert_clean(at, dashboard_env)
    assert job(dashboard_env, job_id)["status"] == "queued"


def test_jobs_page_shows_curves_and_errors(dashboard_env: Backend):
    created = submit_experiment(dashboard_env, [{"name": "attn_only"}, {"name": "linear_probe"}])
    ok, bad = (j["id"] for j in created["jobs"])
    finish_job(dashboard_env, ok, test_acc=0.75)
    finish_job(dashboard_env, bad, status="failed", error="CUDA out of memory (simulated)")
    at = page("jobs").run()
    at.selectbox(key="jobs-experiment").set_value(created["experiment"]["id"]).run()
    rows = frame(at, "jobs-table")
    assert dict(zip(rows["id"], rows["progress"], strict=True))[ok] == 1.0
    at.selectbox(key="job-select").set_value(ok).run()
    curves = figure(at, "job-curves")
    assert [t["name"] for t in curves["data"]] == [
        "held-out accuracy",
        "test accuracy",
        "train loss",
    ]
    assert curves["data"][1]["y"] == [0.375, 0.75]
    at.selectbox(key="job-select").set_value(bad).run()
    assert_clean(at, dashboard_env)
    assert any("CUDA out of memory (simulated)" in e.value for e in at.error)
    assert not at.button(key="retry-job").disabled


def test_results_page_summarises_an_experiment(dashboard_env: Backend):
    created = submit_experiment(
        dashboard_env,
        [{"name": "full"}, {"name": "attn_only"}, {"name": "linear_probe"}],
        seeds=[0, 1],
        name="results-test",
    )
    accs = {"full": (0.80, 0.82), "attn_only": (0.85, 0.87), "linear_probe": (0.50, 0.52)}
    for j in created["jobs"]:
        finish_job(dashboard_env, j["id"], test_acc=accs[j["strategy"]][j["seed"]])
    at = page("results").run()
    at.selectbox(key="results-experiment").set_value(created["experiment"]["id"]).run()
    assert_clean(at, dashboard_env)
    rows = frame(at, "results-table")
    means = dict(zip(rows["label"], rows["test_acc_mean"], strict=True))
    assert means == pytest.approx({"full": 0.81, "attn_only": 0.86, "linear_probe": 0.51})
    scatter = figure(at, "results-scatter")
    points, front = scatter["data"]
    assert sorted(points["y"]) == pytest.approx([0.51, 0.81, 0.86])
    assert front["text"] == ["linear_probe", "attn_only"]  # full is dominated by attn_only
    curves = figure(at, "results-test-curves")
    assert len(curves["data"]) == 6
    assert keys(at, "download_button") == ["download-csv", "download-json"]


def test_angles_page_heatmaps_compare_and_launch_topk(dashboard_env: Backend):
    created = submit_experiment(
        dashboard_env, [{"name": "full"}, {"name": "full"}], dataset="fashion_mnist_a"
    )
    first, second = (j["id"] for j in created["jobs"])
    finish_job(dashboard_env, first, angle_scale=1.0)
    finish_job(dashboard_env, second, angle_scale=2.0)
    at = page("angles").run()
    at.selectbox(key="angles-job").set_value(first).run()
    assert_clean(at, dashboard_env)
    units = figure(at, "angles-unit-heatmap")["data"][0]
    expected = unit_angles()
    assert units["x"] == ["ATTN", "FFN"]
    assert units["z"] == [[expected[f"ATTN.{i}"], expected[f"FFN.{i}"]] for i in range(4)]
    tensors = figure(at, "angles-tensor-heatmap")["data"][0]
    assert tensors["x"] == ["qkv", "proj", "fc1", "fc2", "norms"]
    assert len(tensors["z"]) == 4
    trajectory = figure(at, "angles-trajectory")
    assert [f["name"] for f in trajectory["frames"]] == ["1", "2"]

    at.selectbox(key="angles-compare-job").set_value(second).run()
    side = figure(at, "angles-compare-heatmap")
    assert side["data"][0]["z"][3] == [2 * expected["ATTN.3"], 2 * expected["FFN.3"]]
    assert side["layout"]["title"]["text"] == f"Angle per unit, job {second}"
    at.radio(key="angles-compare-mode").set_value("difference").run()
    diff = figure(at, "angles-compare-heatmap")["data"][0]
    assert diff["z"][3] == [expected["ATTN.3"], expected["FFN.3"]]  # 2x - x
    assert diff["zmid"] == 0

    at.number_input(key="angles-k").set_value(1)
    at.radio(key="angles-order").set_value("smallest").run()
    bars = figure(at, "angles-ranked")["data"]
    highlighted = [
        y for t in bars for y, c in zip(t["y"], t["marker"]["color"], strict=True) if c == "#d62728"
    ]
    assert sorted(highlighted) == ["ATTN.0", "FFN.0"]
    at.button(key="launch-topk").click().run()
    assert_clean(at, dashboard_env)
    with dashboard_env.client() as c:
        newest = c.get("/jobs", params={"limit": 1}).json()["items"][0]
    assert newest["strategy"] == "angle_topk"
    assert newest["config"]["strategy"]["reference_job"] == first
    assert newest["config"]["strategy"]["k"] == 1
    assert newest["dataset"] == "fashion_mnist_a"


def test_soups_page_explains_compatibility_builds_and_shows_results(dashboard_env: Backend):
    created = submit_experiment(
        dashboard_env, [{"name": "attn_only"}], seeds=[0, 1, 2], dataset="fashion_mnist_b"
    )
    a, b, c = (j["id"] for j in created["jobs"])
    finish_job(dashboard_env, a, test_acc=0.7, result={"shifts": {"blur": 0.5}})
    finish_job(dashboard_env, b, test_acc=0.8, result={"shifts": {"blur": 0.6}})
    finish_job(dashboard_env, c, status="failed", error="boom")
    at = page("soups").run()
    assert_clean(at, dashboard_env)
    family = next(o for o in at.selectbox(key="soup-family").options if "fashion_mnist_b" in o)
    at.selectbox(key="soup-family").select(family).run()
    options = at.multiselect(key="soup-ingredients").options
    assert len(options) == 2  # the failed job c is not offered
    assert any(o.startswith(f"#{a} ") for o in options)
    assert any(o.startswith(f"#{b} ") for o in options)
    blocked = frame(at, "soup-blocked")
    why = dict(zip(blocked["job"], blocked["why"], strict=True))
    assert "only succeeded jobs" in why[c]
    assert at.button(key="submit-soup").disabled  # fewer than two ingredients
    at.multiselect(key="soup-ingredients").set_value([a, b])
    at.radio(key="soup-method").set_value("greedy")
    at.multiselect(key="soup-shifts").set_value(["blur"]).run()
    at.button(key="submit-soup").click().run()
    assert_clean(at, dashboard_env)
    with dashboard_env.client() as client:
        soup_job = client.get("/jobs", params={"kind": "soup", "limit": 1}).json()["items"][0]
    assert soup_job["config"]["ingredients"] == [a, b]
    assert soup_job["config"]["method"] == "greedy"
    assert any("results appear when it succeeds" in i.value for i in at.info)

    trace = [
        {"order": 0, "job_id": b, "candidate_score": 0.79, "accepted": True},
        {"order": 1, "job_id": a, "candidate_score": 0.78, "accepted": False},
    ]
    finish_soup(
        dashboard_env, soup_job["id"], trace=trace, score_in=0.81, scores_out={"blur": 0.65}
    )
    st.cache_data.clear()  # the page caches job lists for a refresh period
    at = page("soups").run()
    at.selectbox(key="soup-select").set_value(soup_job["id"]).run()
    assert_clean(at, dashboard_env)
    accepted, rejected, _ = figure(at, "soup-trace")["data"]
    assert accepted["text"] == [f"job {b}"] and rejected["text"] == [f"job {a}"]
    bars = {
        t["name"]: dict(zip(t["x"], t["y"], strict=True))
        for t in figure(at, "soup-comparison")["data"]
    }
    assert bars["greedy soup"] == {"in-distribution": 0.81, "blur": 0.65}
    assert bars[f"best ingredient (#{b})"] == {"in-distribution": 0.8, "blur": 0.6}


def test_jobs_page_follows_progress_of_running_jobs(dashboard_env: Backend):
    from backend import crud
    from backend.db.session import session_scope

    created = submit_experiment(dashboard_env, [{"name": "ffn_last_half"}])
    job_id = created["jobs"][0]["id"]
    with session_scope(dashboard_env.db_url) as s:
        assert crud.claim_job(s, job_id=job_id, worker="dashboard-test")
        crud.heartbeat(
            s,
            job_id=job_id,
            worker="dashboard-test",
            progress=0.4,
            info={"epoch": 1, "images_per_sec": 1234.0},
        )
    at = page("jobs").run()
    at.selectbox(key="jobs-experiment").set_value(created["experiment"]["id"]).run()
    assert_clean(at, dashboard_env)
    rows = frame(at, "jobs-table")
    assert list(rows["progress"]) == [0.4] and list(rows["images/s"]) == [1234.0]
    assert any("refreshing every" in c.value for c in at.caption)
    at.selectbox(key="job-select").set_value(job_id).run()
    assert not at.button(key="cancel-job").disabled
    with session_scope(dashboard_env.db_url) as s:
        crud.heartbeat(
            s,
            job_id=job_id,
            worker="dashboard-test",
            progress=0.7,
            info={"epoch": 2, "images_per_sec": 1500.0},
        )
    st.cache_data.clear()  # instead of waiting out the one-second cache
    at.run()
    assert list(frame(at, "jobs-table")["progress"]) == [0.7]
    assert [p.value for p in at.get("progress")] == [70]

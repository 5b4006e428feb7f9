"""Every page under Streamlit's AppTest against a real backend fed by the real engine (see
conftest.py): what a page draws is compared with what the API holds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard.charts import TUNED_COLOR, pareto_front
from tests.dashboard.conftest import (
    DATASET,
    MODEL,
    Backend,
    Engine,
    api,
    claim,
    fail_job,
    heartbeat,
    submit_experiment,
)

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "app_pages"
pytestmark = pytest.mark.timeout(300)


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)


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
    text = page_text(at)
    assert backend.token not in text
    assert not backend.worker_token or backend.worker_token not in text


def job(backend: Backend, job_id: int) -> dict:
    return api(backend, f"/jobs/{job_id}")


def final_units(backend: Backend, job_id: int) -> dict[str, dict]:
    """The job's final unit rows by name, as the API answers them."""
    return {r["name"]: r for r in api(backend, f"/jobs/{job_id}/angles")["final"]["units"]}


def on_grid(rows: dict[str, dict], depth: int, kinds=("ATTN", "FFN")) -> list[list[float]]:
    """The blocks x kinds matrix the unit heatmap must show, placed by the rows' own fields."""
    z = [[None] * len(kinds) for _ in range(depth)]
    for r in rows.values():
        z[r["block"]][kinds.index(r["group"])] = r["angle_deg"]
    return z


def ranked_per_group(rows: dict[str, dict], k: int, largest: bool) -> set[str]:
    out = set()
    for group in {r["group"] for r in rows.values()}:
        members = sorted(
            (r for r in rows.values() if r["group"] == group),
            key=lambda r: r["angle_deg"],
            reverse=largest,
        )
        out |= {r["name"] for r in members[:k]}
    return out


def test_new_experiment_previews_units_and_launches_jobs(dashboard_env: Backend):
    at = page("new_experiment").run()
    assert_clean(at, dashboard_env)
    at.selectbox(key="model").set_value(MODEL)
    at.selectbox(key="dataset").set_value(DATASET)
    at.multiselect(key="strategies").set_value(["full", "attn_first_half"])
    at.text_input(key="seeds").set_value("0, 1")
    at.number_input(key="hp-epochs").set_value(1)
    at.run()
    assert_clean(at, dashboard_env)
    grid = figure(at, "unit-grid")
    assert [t["name"] for t in grid["data"]] == ["full", "attn_first_half"]
    assert grid["data"][0]["x"] == ["ATTN", "FFN"]
    assert grid["data"][0]["z"] == [[1.0, 1.0]] * 4
    assert grid["data"][1]["z"] == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    served = {
        s["name"]: s
        for s in api(dashboard_env, f"/models/{MODEL}/units", num_classes=4)["strategies"]
    }
    titles = [a["text"] for a in grid["layout"]["annotations"]]
    fraction = 100 * served["attn_first_half"]["tuned_fraction"]
    assert titles[1].startswith("attn_first_half<br>") and f"({fraction:.1f}%)" in titles[1]

    at.button(key="submit-experiment").click().run()
    assert_clean(at, dashboard_env)
    created = frame(at, "submitted-jobs")
    assert len(created) == 4  # 2 strategies x 2 seeds
    assert sorted(created["strategy"]) == ["attn_first_half"] * 2 + ["full"] * 2
    experiment_id = at.session_state["last_experiment"]
    detail = api(dashboard_env, f"/experiments/{experiment_id}")
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


def test_new_experiment_units_parameter_is_a_multiselect_of_the_models_units(
    dashboard_env: Backend,
):
    at = page("new_experiment").run()
    at.selectbox(key="model").set_value(MODEL)
    at.selectbox(key="dataset").set_value(DATASET)
    at.multiselect(key="strategies").set_value(["custom"]).run()
    units = at.multiselect(key="param-custom-units")
    assert units.options == [f"{k}.{i}" for i in range(4) for k in ("ATTN", "FFN")]
    units.set_value(["ATTN.0", "FFN.3"]).run()
    assert_clean(at, dashboard_env)
    assert not at.warning, [w.value for w in at.warning]
    (panel,) = figure(at, "unit-grid")["data"]
    assert panel["z"] == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    at.button(key="submit-experiment").click().run()
    assert_clean(at, dashboard_env)
    config = job(dashboard_env, int(frame(at, "submitted-jobs")["job"][0]))["config"]
    assert config["strategy"] == "custom"
    assert config["strategy_params"]["units"] == ["ATTN.0", "FFN.3"]


def test_new_experiment_reference_job_comes_from_finished_jobs(
    dashboard_env: Backend, engine: Engine
):
    created = submit_experiment(dashboard_env, [{"name": "full"}], dataset="digits")
    ref = created["jobs"][0]["id"]
    at = page("new_experiment").run()
    at.selectbox(key="model").set_value(MODEL)
    at.selectbox(key="dataset").set_value("digits")
    at.multiselect(key="strategies").set_value(["angle_topk"]).run()
    assert_clean(at, dashboard_env)
    assert any(f"no finished fine-tuning job of {MODEL} on digits" in i.value for i in at.info)
    (provisional,) = figure(at, "unit-grid")["data"]  # counts are exact before a reference
    assert sum(v for row in provisional["z"] for v in row) == 2  # k = 1 of each group

    engine.finish(dashboard_env, ref)
    st.cache_data.clear()  # the page caches job lists for a refresh period
    at = page("new_experiment").run()
    at.selectbox(key="model").set_value(MODEL)
    at.selectbox(key="dataset").set_value("digits")
    at.multiselect(key="strategies").set_value(["angle_topk"]).run()
    at.selectbox(key="param-angle_topk-reference_job").set_value(ref)
    at.number_input(key="param-angle_topk-k").set_value(1)
    at.radio(key="param-angle_topk-order").set_value("largest").run()
    assert_clean(at, dashboard_env)
    assert not at.warning, [w.value for w in at.warning]
    (panel,) = figure(at, "unit-grid")["data"]
    rows = final_units(dashboard_env, ref)
    tuned = {
        n for n, r in rows.items() if panel["z"][r["block"]][("ATTN", "FFN").index(r["group"])]
    }
    assert tuned == ranked_per_group(rows, 1, largest=True)
    at.button(key="submit-experiment").click().run()
    assert_clean(at, dashboard_env)
    config = job(dashboard_env, int(frame(at, "submitted-jobs")["job"][0]))["config"]
    assert config["strategy"] == "angle_topk"
    assert config["strategy_params"]["reference_job"] == ref
    assert config["strategy_params"]["k"] == 1 and config["strategy_params"]["order"] == "largest"


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


def test_jobs_page_shows_curves_and_errors(dashboard_env: Backend, engine: Engine):
    created = submit_experiment(dashboard_env, [{"name": "attn_only"}, {"name": "linear_probe"}])
    ok, bad = (j["id"] for j in created["jobs"])
    engine.finish(dashboard_env, ok)
    fail_job(dashboard_env, bad, "CUDA out of memory (simulated)")
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
    metrics = api(dashboard_env, f"/jobs/{ok}/metrics")
    assert curves["data"][1]["y"] == [m["test_acc"] for m in metrics]
    assert curves["data"][1]["x"] == [1, 2]
    at.selectbox(key="job-select").set_value(bad).run()
    assert_clean(at, dashboard_env)
    assert any("CUDA out of memory (simulated)" in e.value for e in at.error)
    assert not at.button(key="retry-job").disabled


def test_results_page_summarises_an_experiment(dashboard_env: Backend, engine: Engine):
    created = submit_experiment(
        dashboard_env,
        [{"name": "full"}, {"name": "attn_only"}, {"name": "linear_probe"}],
        seeds=[0, 1],
        name="results-test",
    )
    accs: dict[str, list[float]] = {}
    for j in created["jobs"]:
        engine.finish(dashboard_env, j["id"])
        accs.setdefault(j["strategy"], []).append(job(dashboard_env, j["id"])["result"]["test_acc"])
    at = page("results").run()
    at.selectbox(key="results-experiment").set_value(created["experiment"]["id"]).run()
    assert_clean(at, dashboard_env)
    rows = frame(at, "results-table")
    means = dict(zip(rows["label"], rows["test_acc_mean"], strict=True))
    assert means == pytest.approx({s: sum(a) / len(a) for s, a in accs.items()})
    summary = api(dashboard_env, f"/experiments/{created['experiment']['id']}")["summary"]
    tuned = {s["label"]: s["tuned_params"] for s in summary}
    assert dict(zip(rows["label"], rows["tuned_params"], strict=True)) == tuned
    scatter = figure(at, "results-scatter")
    points, front = scatter["data"]
    assert sorted(points["y"]) == pytest.approx(sorted(means.values()))
    expected = [
        {"strategy": s, "tuned_params": tuned[s], "accuracy": means[s]} for s in sorted(means)
    ]
    assert front["text"] == [expected[i]["strategy"] for i in pareto_front(expected)]
    assert front["text"][0] == "linear_probe"  # the fewest parameters: never dominated
    curves = figure(at, "results-test-curves")
    assert len(curves["data"]) == 6
    assert keys(at, "download_button") == ["download-csv", "download-json"]


def test_angles_page_heatmaps_compare_and_launch_topk(dashboard_env: Backend, engine: Engine):
    created = submit_experiment(dashboard_env, [{"name": "full"}], seeds=[0, 1])
    first, second = (j["id"] for j in created["jobs"])
    engine.finish(dashboard_env, first)
    engine.finish(dashboard_env, second)
    a, b = final_units(dashboard_env, first), final_units(dashboard_env, second)
    at = page("angles").run()
    assert at.selectbox(key="angles-job").value == second  # jobs that tuned everything first
    at.selectbox(key="angles-job").set_value(first).run()
    assert_clean(at, dashboard_env)
    units = figure(at, "angles-unit-heatmap")["data"][0]
    assert units["x"] == ["ATTN", "FFN"]
    assert units["y"] == [f"block {i}" for i in range(4)]
    assert units["z"] == on_grid(a, 4)
    tensors = figure(at, "angles-tensor-heatmap")["data"][0]
    rows = api(dashboard_env, f"/jobs/{first}/angles")["final"]["tensors"]
    parts = list(dict.fromkeys(r["part"] for r in rows if r["unit"] is not None))
    assert tensors["x"] == parts and "qkv" in parts and "fc2" in parts
    assert len(tensors["z"]) == 4
    trajectory = figure(at, "angles-trajectory")
    assert [f["name"] for f in trajectory["frames"]] == ["1", "2"]

    at.selectbox(key="angles-compare-job").set_value(second).run()
    side = figure(at, "angles-compare-heatmap")
    assert side["data"][0]["z"] == on_grid(b, 4)
    assert side["layout"]["title"]["text"] == f"Angle per unit, job {second}"
    at.radio(key="angles-compare-mode").set_value("difference").run()
    diff = figure(at, "angles-compare-heatmap")["data"][0]
    expected = {n: {**r, "angle_deg": b[n]["angle_deg"] - r["angle_deg"]} for n, r in a.items()}
    flat = [v for row in on_grid(expected, 4) for v in row]
    assert [v for row in diff["z"] for v in row] == pytest.approx(flat)
    assert diff["zmid"] == 0

    at.selectbox(key="angles-strategy").set_value("angle_topk")
    at.number_input(key="angles-k").set_value(1)
    at.radio(key="angles-order").set_value("smallest").run()
    assert_clean(at, dashboard_env)
    bars = figure(at, "angles-ranked")["data"]
    highlighted = {
        y
        for t in bars
        for y, c in zip(t["y"], t["marker"]["color"], strict=True)
        if c == TUNED_COLOR
    }
    assert highlighted == ranked_per_group(a, 1, largest=False)
    at.button(key="launch-topk").click().run()
    assert_clean(at, dashboard_env)
    newest = api(dashboard_env, "/jobs", limit=1)["items"][0]
    assert newest["strategy"] == "angle_topk"
    assert newest["config"]["strategy_params"]["reference_job"] == first
    assert newest["config"]["strategy_params"]["k"] == 1
    assert newest["dataset"] == DATASET


def test_angles_page_leaves_the_reference_check_to_the_api(dashboard_env: Backend, engine: Engine):
    created = submit_experiment(dashboard_env, [{"name": "ffn_only"}])
    partial = created["jobs"][0]["id"]
    engine.finish(dashboard_env, partial)
    at = page("angles").run()
    at.selectbox(key="angles-job").set_value(partial).run()
    assert_clean(at, dashboard_env)
    # ffn_only froze every ATTN unit: exactly zero degrees.
    rows = final_units(dashboard_env, partial)
    assert all(r["angle_deg"] == 0.0 for r in rows.values() if r["group"] == "ATTN")
    assert figure(at, "angles-unit-heatmap")["data"][0]["z"] == on_grid(rows, 4)
    at.selectbox(key="angles-strategy").set_value("angle_topk").run()
    assert any(f"cannot use job {partial}" in w.value for w in at.warning)
    assert at.button(key="launch-topk").disabled


def test_soups_page_explains_compatibility_builds_and_shows_results(
    dashboard_env: Backend, engine: Engine
):
    created = submit_experiment(
        dashboard_env, [{"name": "attn_only"}], seeds=[0, 1, 2], dataset="digits", shifts=["blur"]
    )
    a, b, c = (j["id"] for j in created["jobs"])
    engine.finish(dashboard_env, a)
    engine.finish(dashboard_env, b)
    fail_job(dashboard_env, c, "boom")
    at = page("soups").run()
    assert_clean(at, dashboard_env)
    family = next(o for o in at.selectbox(key="soup-family").options if f"{MODEL} / digits" in o)
    at.selectbox(key="soup-family").select(family).run()
    options = at.multiselect(key="soup-ingredients").options
    assert any(o.startswith(f"#{a} ") for o in options)
    assert any(o.startswith(f"#{b} ") for o in options)
    assert not any(o.startswith(f"#{c} ") for o in options)  # the failed job is not offered
    blocked = frame(at, "soup-blocked")
    why = dict(zip(blocked["job"], blocked["why"], strict=True))
    assert "only succeeded jobs" in why[c]
    assert at.button(key="submit-soup").disabled  # fewer than two ingredients
    methods = [m["name"] for m in api(dashboard_env, "/catalog/soups")]
    assert at.radio(key="soup-method").options == methods
    at.multiselect(key="soup-ingredients").set_value([a, b])
    at.radio(key="soup-method").set_value("greedy")
    at.multiselect(key="soup-shifts").set_value(["blur"]).run()
    at.button(key="submit-soup").click().run()
    assert_clean(at, dashboard_env)
    soup_job = api(dashboard_env, "/jobs", kind="soup", limit=1)["items"][0]
    assert soup_job["config"]["ingredients"] == [a, b]
    assert soup_job["config"]["method"] == "greedy"
    assert any("results appear when it succeeds" in i.value for i in at.info)
    queued_lineage = frame(at, "soup-lineage")  # its ingredients, before it is built
    assert list(queued_lineage["job"]) == [a, b]
    assert set(queued_lineage["in soup"]) == {"—"}

    engine.finish(dashboard_env, soup_job["id"])
    with dashboard_env.client() as client:
        r = client.post(
            "/soups", json={"ingredients": [a, b], "method": "uniform", "shifts": ["blur"]}
        )
    assert r.status_code == 201, r.text
    uniform = r.json()["id"]
    engine.finish(dashboard_env, uniform)
    st.cache_data.clear()  # the page caches job lists for a refresh period
    at = page("soups").run()
    at.selectbox(key="soup-select").set_value(soup_job["id"]).run()
    assert_clean(at, dashboard_env)
    soup = api(dashboard_env, f"/soups/{soup_job['id']}")
    accepted, rejected, _ = figure(at, "soup-trace")["data"]
    assert accepted["text"] == [f"job {t['job_id']}" for t in soup["trace"] if t["accepted"]]
    assert rejected["text"] == [f"job {t['job_id']}" for t in soup["trace"] if not t["accepted"]]
    bars = {
        t["name"]: dict(zip(t["x"], t["y"], strict=True))
        for t in figure(at, "soup-comparison")["data"]
    }
    assert bars["greedy soup"] == {"in-distribution": soup["score_in"], **soup["scores_out"]}
    assert set(soup["scores_out"]) == {"blur"}
    results = {i: job(dashboard_env, i)["result"] for i in (a, b)}
    lineage = frame(at, "soup-lineage")
    assert list(lineage["job"]) == soup["ingredients"]
    kept = {t["job_id"]: "yes" if t["accepted"] else "no" for t in soup["trace"]}
    assert dict(zip(lineage["job"], lineage["in soup"], strict=True)) == kept
    assert list(lineage["test acc"]) == [f"{results[i]['test_acc']:.4f}" for i in (a, b)]
    assert set(lineage["experiment"]) == {f"#{created['experiment']['id']}"}
    best = max(results, key=lambda i: results[i]["heldout_acc"])
    assert bars[f"best ingredient (#{best})"] == {
        "in-distribution": results[best]["test_acc"],
        "blur": results[best]["shifts"]["blur"]["acc"],
    }
    other = api(dashboard_env, f"/soups/{uniform}")
    assert bars[f"uniform soup (#{uniform})"] == {
        "in-distribution": other["score_in"],
        **other["scores_out"],
    }


def test_jobs_page_follows_progress_of_running_jobs(dashboard_env: Backend):
    created = submit_experiment(dashboard_env, [{"name": "ffn_last_half"}])
    job_id = created["jobs"][0]["id"]
    token = claim(dashboard_env, job_id)["claim"]
    heartbeat(dashboard_env, job_id, token, 0.4, epoch=1, images_per_sec=1234.0)
    at = page("jobs").run()
    at.selectbox(key="jobs-experiment").set_value(created["experiment"]["id"]).run()
    assert_clean(at, dashboard_env)
    rows = frame(at, "jobs-table")
    assert list(rows["progress"]) == [0.4] and list(rows["images/s"]) == ["1234"]
    assert any("refreshing every" in c.value for c in at.caption)
    at.selectbox(key="job-select").set_value(job_id).run()
    assert not at.button(key="cancel-job").disabled
    heartbeat(dashboard_env, job_id, token, 0.7, epoch=2, images_per_sec=1500.0)
    st.cache_data.clear()  # instead of waiting out the one-second cache
    at.run()
    assert list(frame(at, "jobs-table")["progress"]) == [0.7]
    assert [p.value for p in at.get("progress")] == [70]


def test_new_experiment_says_whether_a_timm_model_maps_onto_units(dashboard_env: Backend):
    at = page("new_experiment").run()
    at.selectbox(key="model").set_value("other timm model…").run()
    at.text_input(key="timm-model").set_value("deit_small_patch16_224").run()
    assert_clean(at, dashboard_env)
    assert any("deit_small_patch16_224: mapped — 12 blocks" in c.value for c in at.caption)
    at.text_input(key="timm-model").set_value("vit_not_a_model_xyz").run()
    assert_clean(at, dashboard_env)
    assert any("no model matches 'vit_not_a_model_xyz'" in w.value for w in at.warning)

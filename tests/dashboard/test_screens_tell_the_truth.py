"""Issue 16.5, "the screen tells the truth": what a page shows and sends is what the user typed
and what the lab holds (Streamlit AppTest against the real test backend of conftest.py)."""

from __future__ import annotations

import re

import pytest
import streamlit as st

from backend.schemas import HparamsCreate
from tests.dashboard.conftest import (
    DATASET,
    MODEL,
    Backend,
    api,
    claim,
    heartbeat,
    submit_experiment,
)
from tests.dashboard.test_pages import assert_clean, frame, job, page

pytestmark = pytest.mark.timeout(300)


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def _ready(at, strategies: list[str], dataset: str = DATASET):
    at.selectbox(key="model").set_value(MODEL)
    at.selectbox(key="dataset").set_value(dataset)
    at.multiselect(key="strategies").set_value(strategies)
    return at.run()


def test_hyperparameters_come_from_the_api_with_their_ranges(dashboard_env: Backend):
    served = api(dashboard_env, "/catalog/hparams")
    assert [p["name"] for p in served["params"]] == list(HparamsCreate.model_fields)
    lr = next(p for p in served["params"] if p["name"] == "lr")
    assert (lr["minimum"], lr["maximum"], lr["exclusive_minimum"]) == (0, 1, True)
    at = _ready(page("new_experiment").run(), ["full"])
    assert_clean(at, dashboard_env)
    shown = {w.key for kind in ("number_input", "checkbox") for w in at.get(kind)}
    # Every hyperparameter but the seed, which the Seeds box sets (one job per seed).
    assert {k for k in shown if k.startswith("hp-")} == {
        f"hp-{p['name']}" for p in served["params"] if p["name"] != "seed"
    }
    assert at.number_input(key="hp-epochs").label.endswith("[1, 1000]")
    assert at.number_input(key="hp-lr").label.endswith("(0, 1]")
    assert at.number_input(key="hp-epochs").value == served["params"][0]["default"]


def test_invalid_hyperparameters_block_launch_with_the_field_named(dashboard_env: Backend):
    at = _ready(page("new_experiment").run(), ["full"])
    assert not at.button(key="submit-experiment").disabled
    at.number_input(key="hp-epochs").set_value(0)
    at.number_input(key="hp-lr").set_value(-1.0).run()
    assert_clean(at, dashboard_env)
    assert "epochs must be a whole number from 1 to 1000, got 0" in _errors(at)
    assert "lr must be a number greater than 0 and at most 1, got -1" in _errors(at)
    assert at.button(key="submit-experiment").disabled
    assert any("Launch is disabled" in c.value and "epochs" in c.value for c in at.caption)

    at.number_input(key="hp-epochs").set_value(1001).run()
    assert "epochs must be a whole number from 1 to 1000, got 1001" in _errors(at)
    assert at.button(key="submit-experiment").disabled

    # Fixed: what was typed is what is sent.
    at.number_input(key="hp-epochs").set_value(2)
    at.number_input(key="hp-lr").set_value(0.005)
    at.number_input(key="hp-batch_size").set_value(16).run()
    assert not at.error, _errors(at)
    assert not at.button(key="submit-experiment").disabled
    at.button(key="submit-experiment").click().run()
    assert_clean(at, dashboard_env)
    hparams = job(dashboard_env, int(frame(at, "submitted-jobs")["job"][0]))["config"]["hparams"]
    assert (hparams["epochs"], hparams["lr"], hparams["batch_size"]) == (2, 0.005, 16)


def test_invalid_strategy_parameter_blocks_launch(dashboard_env: Backend):
    at = _ready(page("new_experiment").run(), ["angle_topk"])
    k = at.number_input(key="param-angle_topk-k")
    assert k.label.endswith("[1, ∞)")
    k.set_value(0).run()
    assert_clean(at, dashboard_env)
    assert "k must be a whole number at least 1, got 0" in _errors(at)
    assert at.button(key="submit-experiment").disabled
    assert not at.warning, [w.value for w in at.warning]  # no preview of a refused value


def test_bad_seeds_block_launch(dashboard_env: Backend):
    at = _ready(page("new_experiment").run(), ["full"])
    at.text_input(key="seeds").set_value("0, one").run()
    assert "seeds must be whole numbers separated by commas, got '0, one'" in _errors(at)
    assert at.button(key="submit-experiment").disabled


def test_experiment_name_follows_the_choice(dashboard_env: Backend):
    at = page("new_experiment").run()
    first = at.text_input(key="experiment-name")
    assert first.value == ""
    at = _ready(at, ["full"], dataset="digits")
    box = at.text_input(key="experiment-name")
    assert box.value == "" and box.placeholder == f"{MODEL} on digits"
    at.button(key="submit-experiment").click().run()
    assert_clean(at, dashboard_env)
    experiment = api(dashboard_env, f"/experiments/{at.session_state['last_experiment']}")
    assert experiment["name"] == f"{MODEL} on digits"

    at.text_input(key="experiment-name").set_value("  my run  ")
    at.button(key="submit-experiment").click().run()
    experiment = api(dashboard_env, f"/experiments/{at.session_state['last_experiment']}")
    assert experiment["name"] == "my run"


def _finish(backend: Backend, job_id: int, token: str, status: str) -> None:
    with backend.worker() as w:
        r = w.post(f"/jobs/{job_id}/finish", json={"claim": token, "status": status})
    assert r.status_code < 300, r.text


def test_jobs_page_shows_epoch_of_n_eta_and_no_none(dashboard_env: Backend):
    created = submit_experiment(dashboard_env, [{"name": "ffn_only"}, {"name": "attn_only"}])
    running, queued = sorted(j["id"] for j in created["jobs"])
    token = claim(dashboard_env, running)["claim"]
    heartbeat(
        dashboard_env,
        running,
        token,
        0.6,
        epoch=2,
        epochs_done=1,
        images_per_sec=100.0,
    )
    at = page("jobs").run()
    at.selectbox(key="jobs-experiment").set_value(created["experiment"]["id"]).run()
    assert_clean(at, dashboard_env)
    rows = frame(at, "jobs-table")
    by_id = {r["id"]: r for r in rows.to_dict("records")}
    assert by_id[running]["epoch"] == "epoch 2 of 2"  # hparams.epochs = 2 (submit_experiment)
    assert re.fullmatch(r"\d+ (s|min)", by_id[running]["ETA"]), by_id[running]["ETA"]
    assert by_id[queued]["epoch"] == by_id[queued]["ETA"] == by_id[queued]["images/s"] == "—"
    assert by_id[queued]["worker"] == by_id[queued]["device"] == "—"
    assert not [(c, v) for r in by_id.values() for c, v in r.items() if v is None or v == "None"]
    # The details show the running job, not the newest (queued) one.
    assert at.selectbox(key="job-select").value == running
    (bar,) = at.get("progress")
    assert "epoch 2 of 2" in bar.proto.text
    assert any(m.label == "time left" and re.fullmatch(r"\d+ (s|min)", m.value) for m in at.metric)


def test_jobs_page_says_a_cancellation_is_pending_and_keeps_the_selection(dashboard_env: Backend):
    created = submit_experiment(dashboard_env, [{"name": "ffn_only"}, {"name": "attn_only"}])
    older, newer = sorted(j["id"] for j in created["jobs"])
    token = claim(dashboard_env, older)["claim"]
    heartbeat(dashboard_env, older, token, 0.2, epoch=1)
    at = page("jobs").run()
    at.selectbox(key="jobs-experiment").set_value(created["experiment"]["id"]).run()
    assert at.selectbox(key="job-select").value == older
    at.button(key="cancel-job").click().run()
    assert_clean(at, dashboard_env)
    assert job(dashboard_env, older)["status"] == "running"  # until its worker stops
    status = dict(
        zip(frame(at, "jobs-table")["id"], frame(at, "jobs-table")["status"], strict=True)
    )
    assert status == {older: "running · cancelling", newer: "queued"}
    assert any(o.endswith("running · cancelling") for o in at.selectbox(key="job-select").options)
    assert at.button(key="cancel-job").disabled

    _finish(dashboard_env, older, token, "cancelled")  # the worker acted on it
    st.cache_data.clear()
    at.run()
    assert at.selectbox(key="job-select").value == older
    assert (
        dict(zip(frame(at, "jobs-table")["id"], frame(at, "jobs-table")["status"], strict=True))[
            older
        ]
        == "cancelled"
    )
    at.button(key="retry-job").click().run()
    assert_clean(at, dashboard_env)
    assert job(dashboard_env, older)["status"] == "queued"
    assert at.selectbox(key="job-select").value == older  # the selection stays after retry


def test_sidebar_health_agrees_with_the_page(monkeypatch, tmp_path):
    """One health check per run: a backend that went away is not "healthy" in the sidebar
    while the page says it cannot be reached."""
    from streamlit.testing.v1 import AppTest

    from dashboard import data
    from tests.dashboard.conftest import forget_caches, point_dashboard_at, running_backend
    from tests.dashboard.test_pages import PAGES

    try:
        with running_backend(tmp_path) as backend:
            point_dashboard_at(backend, monkeypatch)
            at = AppTest.from_file(str(PAGES.parent / "app.py"), default_timeout=30).run()
            at.switch_page("app_pages/jobs.py").run()
            assert_clean(at, backend)
            assert any("backend healthy" in c.value for c in at.sidebar.caption)
        data.clear()  # the page's short-lived reads expire
        at.run()  # the backend has stopped
        assert any("cannot reach the backend" in e.value for e in at.error)
        sidebar = [c.value for c in at.sidebar.caption]
        assert not any("backend healthy" in c for c in sidebar), sidebar
        assert any("cannot reach the backend" in c for c in sidebar), sidebar
    finally:
        forget_caches()

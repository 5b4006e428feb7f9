"""The cost preview on the pages: New experiment offers a calibration, queues it, and once the
real calibrate job has run (the engine playing the worker) shows each chosen strategy's
predicted time and peak memory as ``GET /cost`` answers them; the Jobs page then shows a
finished job's predicted against measured training time.

A backend of its own (not the session's shared one), so that no other page test sees the
calibrate job."""

from __future__ import annotations

import pytest

from tests.dashboard.conftest import (
    DATASET,
    MODEL,
    Backend,
    Engine,
    api,
    forget_caches,
    submit_experiment,
)
from tests.dashboard.test_pages import assert_clean, frame, page, page_text

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def env(own_lab: Backend) -> Backend:
    return own_lab


def _choose(at, strategies: list[str]):
    at.selectbox(key="model").set_value(MODEL)
    at.selectbox(key="dataset").set_value(DATASET)
    at.multiselect(key="strategies").set_value(strategies)
    at.number_input(key="hp-epochs").set_value(2)
    at.checkbox(key="hp-augment").set_value(False)
    return at.run()


def test_calibrate_then_predictions_then_predicted_against_measured(env: Backend, engine: Engine):
    at = _choose(page("new_experiment").run(), ["full", "linear_probe"])
    assert_clean(at, env)
    assert f"No calibration of {MODEL} on {DATASET} yet" in page_text(at)
    at.button(key="calibrate").click().run()
    assert_clean(at, env)
    (queued,) = api(env, "/jobs", kind="calibrate")["items"]
    assert (queued["model"], queued["dataset"], queued["status"]) == (MODEL, DATASET, "queued")
    assert f"Calibrate job #{queued['id']} of {MODEL} on {DATASET} is queued" in page_text(at)
    assert "calibrate" not in [b.key for b in at.button]  # one calibration at a time

    engine.finish(env, queued["id"])  # the real calibration, on this machine's CPU
    forget_caches()
    at.run()
    assert_clean(at, env)
    served = api(env, "/cost", model=MODEL, dataset=DATASET, epochs=2, augment=False)
    assert served["calibrated"] and served["calibration_job"] == queued["id"]
    by_name = {p["strategy"]: p for p in served["strategies"]}
    shown = frame(at, "cost-preview")
    assert list(shown["strategy"]) == ["full", "linear_probe"]
    for name, peak, cached in zip(
        shown["strategy"], shown["peak memory (MB)"], shown["prefix cached"], strict=True
    ):
        assert peak == round(by_name[name]["peak_mb"], 1) and peak > 0
        assert cached == ("yes" if by_name[name]["prefix_cached"] else "no")
    assert list(shown["prefix cached"]) == ["no", "yes"]  # linear probing trains on features
    assert f"Calibrate job #{queued['id']} has finished" in page_text(at)
    assert served["device_kind"] in page_text(at)

    created = submit_experiment(
        env, [{"name": "linear_probe"}], hparams={"epochs": 1, "augment": False}
    )
    (job,) = created["jobs"]
    engine.finish(env, job["id"])
    forget_caches()
    jobs = page("jobs").run()
    jobs.selectbox(key="job-select").set_value(job["id"]).run()
    assert_clean(jobs, env)
    compared = api(env, f"/cost/jobs/{job['id']}")
    assert compared["measured_seconds"] > 0 and compared["predicted"]["prefix_cached"]
    text = page_text(jobs)
    assert "Training time: predicted" in text and served["device_kind"] in text

"""The Results page's "any set of jobs" view: several experiments, loose fine-tuning jobs and
soups side by side, with shift accuracy columns and spreads (mean, sd, 95% t-interval, n); and
the pure shaping behind it."""

from __future__ import annotations

import math
import statistics

import pytest

from contract.api import ResultGroup, ResultJob, ResultsView, Spread
from contract.vocab import JobKind, JobStatus
from dashboard.shaping import result_job_rows, result_points, results_table
from tests.dashboard.conftest import (
    MODEL,
    Backend,
    api,
    claim,
    submit_experiment,
)
from tests.dashboard.test_pages import assert_clean, figure, frame, page

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def lab(own_lab: Backend) -> Backend:
    return own_lab


def _spread(*values: float) -> Spread:
    if len(values) < 2:
        return Spread(n=len(values), mean=values[0] if values else None, sd=None, ci95=None)
    sd = statistics.stdev(values)
    return Spread(n=len(values), mean=statistics.fmean(values), sd=sd, ci95=12.706 * sd / 1.4142)


def _group(label: str, source: str, experiment_id: int | None, **kw) -> ResultGroup:
    base = dict(
        label=label,
        source=source,
        experiment_id=experiment_id,
        kind=JobKind.FINETUNE,
        model="m",
        dataset="d",
        recipe=label,
        hparams={},
        jobs=2,
        succeeded=2,
        job_ids=[1, 2],
        heldout_acc=_spread(0.5, 0.6),
        test_acc=_spread(0.7, 0.8),
        shift_acc={},
        tuned_params=100,
        tuned_fraction=0.5,
    )
    return ResultGroup(**(base | kw))


def test_shaping_puts_spreads_and_shifts_in_columns() -> None:
    view = ResultsView(
        experiments=[3],
        loose=True,
        soups=True,
        shifts=["blur"],
        groups=[
            _group("#3 · full", "experiment", 3, shift_acc={"blur": _spread(0.4, 0.5)}),
            _group("soup (uniform)", "soup", None, test_acc=_spread(0.9), tuned_params=None),
        ],
        jobs=[
            ResultJob(
                job_id=1,
                group="#3 · full",
                experiment_id=3,
                kind=JobKind.FINETUNE,
                status=JobStatus.SUCCEEDED,
                seed=0,
                tuned_params=100,
                heldout_acc=0.5,
                test_acc=0.7,
                shift_acc={"blur": 0.4},
            )
        ],
        truncated=False,
    )
    first, soup = results_table(view, {3: "#3 sweep (m / d)"})
    assert first["from"] == "#3 sweep (m / d)" and soup["from"] == "soup(s)"
    assert first["test acc"] == pytest.approx(0.75) and first["n"] == 2
    assert first["test ±95%"] == view.groups[0].test_acc.ci95
    assert first["blur acc"] == pytest.approx(0.45) and soup["blur acc"] is None
    assert soup["test sd"] is None and soup["n"] == 1
    # the soup has no parameter count: no point; the experiment's error bar is its interval
    assert result_points(view) == [
        {
            "strategy": "#3 · full",
            "tuned_params": 100,
            "accuracy": pytest.approx(0.75),
            "spread": view.groups[0].test_acc.ci95,
        }
    ]
    assert result_job_rows(view) == [
        {
            "job": 1,
            "group": "#3 · full",
            "seed": 0,
            "status": "succeeded",
            "held-out acc": 0.5,
            "test acc": 0.7,
            "blur acc": 0.4,
        }
    ]


def _finish(backend: Backend, job_id: int, test_acc: float, blur: float, soup: bool = False):
    """What a worker reports: a fine-tuning job's epoch of metrics (a soup's accuracies are in
    its summary), then the finish with a shift accuracy."""
    token = claim(backend, job_id)["claim"]
    accs = {"heldout_acc": test_acc - 0.1, "test_acc": test_acc}
    result = {"shifts": {"blur": {"acc": blur, "loss": 1.0}}} | (accs if soup else {})
    with backend.worker() as w:
        if not soup:
            epoch = {"claim": token, "epoch": 1, "metrics": {"train_loss": 1.0, **accs}}
            assert w.put(f"/jobs/{job_id}/epochs/1", json=epoch).status_code == 204
        body = {"claim": token, "status": "succeeded", "result": result}
        assert w.post(f"/jobs/{job_id}/finish", json=body).status_code == 204


def test_the_page_shows_experiments_loose_jobs_and_soups_together(lab: Backend):
    one = submit_experiment(lab, [{"name": "attn_only"}], seeds=[0, 1, 2])
    two = submit_experiment(lab, [{"name": "linear_probe"}], seeds=[0, 1])
    accs = {"one": (0.6, 0.65, 0.7), "two": (0.5, 0.52)}
    for created, name in ((one, "one"), (two, "two")):
        for j, acc in zip(created["jobs"], accs[name], strict=True):
            _finish(lab, j["id"], acc, acc - 0.3)
    loose = []
    with lab.client() as c:
        for seed in (5, 6):
            body = {
                "model": MODEL,
                "dataset": "synthetic",
                "strategy": {"name": "ffn_only"},
                "hparams": {"epochs": 1, "seed": seed},
            }
            r = c.post("/jobs", json=body)
            assert r.status_code == 201, r.text
            loose.append(r.json()["id"])
            _finish(lab, loose[-1], 0.8, 0.4)
        r = c.post("/soups", json={"ingredients": loose, "method": "uniform"})
        assert r.status_code == 201, r.text
    soup_job = r.json()["job_id"]
    _finish(lab, soup_job, 0.85, 0.45, soup=True)
    e1, e2 = one["experiment"]["id"], two["experiment"]["id"]

    at = page("results").run()
    at.radio(key="results-view").set_value("any set of jobs").run()
    at.multiselect(key="results-any-experiments").set_value([e1, e2]).run()
    assert_clean(at, lab)
    rows = frame(at, "results-any-table")
    served = api(lab, "/results", experiments=f"{e1},{e2}", loose=True, soups=True)
    labels = [g["label"] for g in served["groups"]]
    assert list(rows["group"]) == labels
    assert f"#{e1} · attn_only" in labels and f"#{e2} · linear_probe" in labels
    assert "loose · ffn_only" in labels and "soup (uniform)" in labels
    by_label = {label: i for i, label in enumerate(rows["group"])}
    attn = by_label[f"#{e1} · attn_only"]
    sd = statistics.stdev(accs["one"])
    assert rows["n"][attn] == 3
    assert rows["test acc"][attn] == pytest.approx(statistics.fmean(accs["one"]))
    assert rows["test sd"][attn] == pytest.approx(sd)
    assert rows["test ±95%"][attn] == pytest.approx(4.303 * sd / math.sqrt(3))
    assert rows["blur acc"][attn] == pytest.approx(statistics.fmean(accs["one"]) - 0.3)
    assert rows["held-out acc"][by_label["soup (uniform)"]] == pytest.approx(0.75)
    assert rows["blur acc"][by_label["loose · ffn_only"]] == pytest.approx(0.4)
    scatter = figure(at, "results-any-scatter")
    assert set(scatter["data"][0]["text"]) == {g for g in labels if g != "soup (uniform)"}
    jobs = frame(at, "results-any-jobs")
    assert sorted(jobs["job"]) == sorted(
        [j["id"] for j in one["jobs"] + two["jobs"]] + loose + [soup_job]
    )

    at.checkbox(key="results-any-soups").uncheck().run()
    at.checkbox(key="results-any-loose").uncheck().run()
    assert list(frame(at, "results-any-table")["group"]) == [
        f"#{e1} · attn_only",
        f"#{e2} · linear_probe",
    ]
    at.multiselect(key="results-any-experiments").set_value([]).run()
    assert any("Pick experiments, loose jobs or soups" in i.value for i in at.info)

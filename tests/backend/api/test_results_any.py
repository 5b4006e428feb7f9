"""``GET /results``: several experiments, loose fine-tuning jobs and soups side by side, grouped
by recipe, with held-out, test and shift accuracy spreads (mean, sd, 95% t-interval, n)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import claims, crud
from backend.core.config import ApiSettings
from backend.db.session import get_engine, make_sessionmaker
from backend.results import spread, t_quantile_975
from backend.schemas import SoupCreate
from backend.submit import submit_soup
from contract.api import FinishReport, ResultsView
from contract.vocab import API_PREFIX, JobStatus
from tests.utils.factories import claimed, finished_finetune, queued_finetune

URL = f"{API_PREFIX}/results"


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _experiment(db: Session, name: str) -> int:
    experiment = crud.create_experiment(
        db, name=name, model="m", dataset="d", hparams={}, config={}
    )
    db.commit()
    return experiment.id


def _shifts(blur: float) -> dict:
    return {"shifts": {"blur": {"acc": blur, "loss": 1.0}}}


def _soup(db: Session, ingredients: list[int], test_acc: float, blur: float) -> int:
    job = submit_soup(db, SoupCreate(ingredients=ingredients, method="uniform", shifts=["blur"]))
    claim = claimed(db, job)
    result = {
        "heldout_acc": test_acc - 0.05,
        "test_acc": test_acc,
        "tuned_params": 1234,  # the soup's tensors, from its summary
        **_shifts(blur),
    }
    report = FinishReport(claim=claim, status=JobStatus.SUCCEEDED, result=result)
    assert claims.finish_job(db, job_id=job.id, claim=claim, report=report)
    return job.id


@pytest.fixture
def lab(db: Session) -> dict:
    """Two experiments (attn_only over three seeds, full over two), three loose full jobs (two
    succeeded, one queued) and a soup of the two finished loose ones."""
    e1, e2 = _experiment(db, "one"), _experiment(db, "two")
    attn = [
        finished_finetune(
            db,
            experiment_id=e1,
            strategy="attn_only",
            seed=s,
            test_acc=acc,
            result=_shifts(acc - 0.2),
        ).id
        for s, acc in enumerate((0.70, 0.74, 0.78))
    ]
    full = [
        finished_finetune(db, experiment_id=e2, seed=s, test_acc=acc).id
        for s, acc in enumerate((0.80, 0.84))
    ]
    loose = [finished_finetune(db, seed=s, test_acc=0.9, result=_shifts(0.5)).id for s in (0, 1)]
    running = queued_finetune(db, seed=2).id  # loose too, not finished: counted, no accuracy
    soup = _soup(db, loose, 0.92, 0.6)
    return {
        "e1": e1,
        "e2": e2,
        "attn": attn,
        "full": full,
        "loose": loose + [running],
        "soup": soup,
    }


def _view(client: TestClient, **params) -> ResultsView:
    r = client.get(URL, params=params)
    assert r.status_code == 200, r.text
    return ResultsView.model_validate(r.json())


def test_two_experiments_loose_jobs_and_soups_side_by_side(client: TestClient, lab: dict) -> None:
    view = _view(client, experiments=f"{lab['e1']},{lab['e2']}", loose="true", soups="true")
    assert view.experiments == [lab["e1"], lab["e2"]] and view.loose and view.soups
    assert not view.truncated and view.shifts == ["blur"]
    groups = {g.label: g for g in view.groups}
    assert list(groups) == [
        f"#{lab['e1']} · attn_only",
        f"#{lab['e2']} · full",
        "loose · full",
        "soup (uniform)",
    ]
    attn = groups[f"#{lab['e1']} · attn_only"]
    assert (attn.source, attn.experiment_id, attn.jobs, attn.succeeded) == (
        "experiment",
        lab["e1"],
        3,
        3,
    )
    assert attn.job_ids == lab["attn"]
    accs = [0.70, 0.74, 0.78]
    sd = statistics.stdev(accs)
    assert attn.test_acc.n == 3
    assert attn.test_acc.mean == pytest.approx(0.74)
    assert attn.test_acc.sd == pytest.approx(sd)
    assert attn.test_acc.ci95 == pytest.approx(4.303 * sd / math.sqrt(3))
    assert attn.heldout_acc.mean == pytest.approx(0.73)  # the factory's held-out: test - 0.01
    assert attn.shift_acc["blur"].mean == pytest.approx(0.54)
    assert attn.shift_acc["blur"].n == 3
    assert "seed" not in attn.hparams and attn.hparams["epochs"] == 2

    full = groups[f"#{lab['e2']} · full"]
    assert full.test_acc.n == 2 and full.test_acc.ci95 == pytest.approx(
        12.706 * statistics.stdev([0.80, 0.84]) / math.sqrt(2)
    )
    assert full.shift_acc == {}  # evaluated under no shift

    loose = groups["loose · full"]
    assert (loose.source, loose.experiment_id, loose.jobs, loose.succeeded) == ("loose", None, 3, 2)
    assert loose.test_acc.n == 2 and loose.test_acc.sd == 0.0
    assert loose.test_acc.mean == pytest.approx(0.9)

    soup = groups["soup (uniform)"]
    assert (soup.source, soup.kind, soup.jobs) == ("soup", "soup", 1)
    assert soup.test_acc.mean == pytest.approx(0.92) and soup.test_acc.sd is None
    assert soup.heldout_acc.mean == pytest.approx(0.87)
    assert soup.shift_acc["blur"].mean == pytest.approx(0.6)
    assert soup.tuned_params == 1234 and rows_tuned(view, lab["soup"]) == 1234

    rows = {r.job_id: r for r in view.jobs}
    assert sorted(rows) == sorted(lab["attn"] + lab["full"] + lab["loose"] + [lab["soup"]])
    first = rows[lab["attn"][0]]
    assert (first.group, first.seed, first.test_acc) == (attn.label, 0, pytest.approx(0.70))
    assert first.shift_acc == {"blur": pytest.approx(0.5)}
    assert rows[lab["loose"][-1]].test_acc is None and rows[lab["loose"][-1]].status == "queued"


def rows_tuned(view: ResultsView, job_id: int) -> int | None:
    return next(r.tuned_params for r in view.jobs if r.job_id == job_id)


def test_each_source_alone(client: TestClient, lab: dict) -> None:
    only_loose = _view(client, loose="true")
    assert {r.job_id for r in only_loose.jobs} == set(lab["loose"])
    only_soups = _view(client, soups="true")
    assert [r.job_id for r in only_soups.jobs] == [lab["soup"]]
    repeated = _view(client, experiments=[str(lab["e2"]), str(lab["e1"])])
    assert repeated.experiments == [lab["e2"], lab["e1"]]
    assert {r.job_id for r in repeated.jobs} == set(lab["attn"] + lab["full"])


def test_same_strategy_in_two_places_gets_two_labels(client: TestClient, db: Session) -> None:
    finished_finetune(db, seed=0)
    finished_finetune(db, seed=0, dataset="digits")
    labels = [g.label for g in _view(client, loose="true").groups]
    assert len(labels) == 2 and len(set(labels)) == 2
    assert all(label.startswith("loose · full · ") for label in labels)


def test_bad_selections_are_clear_errors(client: TestClient, lab: dict) -> None:
    r = client.get(URL)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", "experiments"] and "nothing selected" in error["msg"]
    r = client.get(URL, params={"experiments": "1,x"})
    assert r.status_code == 422 and "'x' is not an experiment id" in r.json()["detail"][0]["msg"]
    missing = lab["e2"] + 100
    r = client.get(URL, params={"experiments": f"{lab['e1']},{missing}"})
    assert r.status_code == 404 and r.json()["detail"] == f"no experiment {missing}"
    with TestClient(client.app, raise_server_exceptions=False) as anonymous:
        assert anonymous.get(URL, params={"loose": "true"}).status_code == 401


def test_spread_and_the_t_quantiles() -> None:
    assert spread([]) == {"n": 0, "mean": None, "sd": None, "ci95": None}
    assert spread([0.5]) == {"n": 1, "mean": 0.5, "sd": None, "ci95": None}
    s = spread([0.1, 0.2, 0.3, 0.4])
    assert s["ci95"] == pytest.approx(3.182 * statistics.stdev([0.1, 0.2, 0.3, 0.4]) / 2)
    assert t_quantile_975(30) == 2.042 and t_quantile_975(1) == 12.706
    # beyond the table: between the last entry and the normal quantile, decreasing
    assert 1.96 < t_quantile_975(1000) < t_quantile_975(60) < t_quantile_975(31) < 2.042
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)
    assert t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)

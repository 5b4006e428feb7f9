"""Rank jobs over HTTP: ``POST /jobs`` with ``kind: rank`` stores a `RankSpec`, bad criteria
and parameters are a 422 naming the field; ``GET /catalog/criteria`` is the registry;
``GET /criteria/compare`` compares the newest scores per criterion (rank jobs finished through
the worker routes, and a full fine-tuning job's final angles) with `pft.criteria.compare`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.config import ApiSettings
from backend.db.session import get_engine, make_sessionmaker
from backend.enqueue import broker_job_ids
from contract.api import CriteriaComparison, CriterionEntry, FinishReport, JobPublic
from contract.vocab import API_PREFIX, WORKER_ROUTES, JobStatus
from pft.criteria.compare import compare
from pft.criteria.registry import CRITERIA, get_criterion, job_criteria
from pft.jobs.specs import RankSpec, spec_from_dict
from pft.model_catalog import TEST_MODEL, unit_map_for
from tests.utils.factories import finished_finetune, unit_angles

JOBS = f"{API_PREFIX}/jobs"
W = API_PREFIX + WORKER_ROUTES
RANK = {"kind": "rank", "model": TEST_MODEL, "dataset": "synthetic"}
FISHER, GRADIENT_NORM, SHORT_ANGLE = "fisher", "gradient_norm", "short_angle"
ANGLE = next(c.name for c in CRITERIA.values() if c.needs_reference)


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _post(client: TestClient, **body) -> dict:
    r = client.post(JOBS, json={**RANK, **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_submit_a_rank_job_stores_its_spec(client: TestClient, settings: ApiSettings) -> None:
    job = _post(client, criterion=GRADIENT_NORM, batches=4, seed=3)
    assert (job["kind"], job["status"], job["model"], job["seed"]) == (
        "rank",
        "queued",
        TEST_MODEL,
        3,
    )
    assert job["strategy"] is None and job["dataset"] == "synthetic"
    spec = spec_from_dict(job["kind"], job["config"])
    assert isinstance(spec, RankSpec) and spec.to_dict() == job["config"]
    # The registry resolved the parameters: its default batch size filled in.
    assert spec.params == get_criterion(GRADIENT_NORM).validate({"batches": 4})
    assert spec.params == {"batches": 4, "batch_size": 32}
    assert (spec.criterion, spec.seed, spec.pretrained) == (GRADIENT_NORM, 3, True)
    assert broker_job_ids(settings=settings) == {job["id"]}
    short = _post(client, criterion=SHORT_ANGLE, epochs=2, lr=0.01)["config"]
    assert short["params"] == {"epochs": 2, "lr": 0.01, "batch_size": 64}
    listed = client.get(JOBS, params={"kind": "rank"}).json()
    assert listed["total"] == 2


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"criterion": "fishr"}, "criterion", ["unknown criterion", "close matches: fisher"]),
        ({"criterion": ANGLE}, "criterion", ["not run as a rank job", *job_criteria()]),
        ({"criterion": FISHER, "batches": 0}, "batches", ["greater than or equal to 1"]),
        ({"criterion": FISHER, "batches": True}, "batches", ["valid integer"]),
        ({"criterion": FISHER, "epochs": 2}, "epochs", ["takes no parameter 'epochs'"]),
        ({"criterion": SHORT_ANGLE, "lr": 0.0}, "lr", ["lr must be a number > 0"]),
        ({"criterion": FISHER, "nope": 1}, "nope", ["Extra inputs"]),
        ({"criterion": FISHER, "seed": -1}, "seed", ["greater than or equal to 0"]),
        ({"criterion": FISHER, "dataset": "mnistt"}, "dataset", ["unknown dataset"]),
        ({}, "criterion", ["Field required"]),
    ],
)
def test_bad_rank_requests_are_a_422_naming_the_field(
    client: TestClient, body: dict, loc: str, words: list[str]
) -> None:
    r = client.post(JOBS, json={**RANK, **body})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert loc in error["loc"], error
    for word in words:
        assert word in error["msg"], error
    assert client.get(JOBS).json()["total"] == 0


def test_the_criteria_catalogue_is_the_registry(client: TestClient) -> None:
    r = client.get(f"{API_PREFIX}/catalog/criteria")
    assert r.status_code == 200
    entries = [CriterionEntry.model_validate(e) for e in r.json()]
    assert [e.name for e in entries] == list(CRITERIA)
    by_name = {e.name: e for e in entries}
    assert [n for n, e in by_name.items() if not e.needs_reference] == job_criteria()
    assert by_name[SHORT_ANGLE].needs_training and by_name[FISHER].cost
    assert {p.name: p.default for p in by_name[FISHER].params} == {"batches": 8, "batch_size": 32}
    assert (
        client.get(f"{API_PREFIX}/catalog/criteria", headers={"Authorization": ""}).status_code
        == 401
    )


# --- the comparison ------------------------------------------------------------------------


def _scores(values: dict[str, float], criterion: str, seconds: float) -> dict:
    """A rank job's result as the runner returns it (`contract.api.RankScores`)."""
    um = unit_map_for(TEST_MODEL, 4)
    units = [{"name": u.name, "group": u.group, "score": values[u.name]} for u in um.units]
    return {"criterion": criterion, "units": units, "seconds": seconds, "device": "cpu"}


def _run(
    client: TestClient,
    worker_client: TestClient,
    criterion: str,
    result: dict,
    status: JobStatus = JobStatus.SUCCEEDED,
    **body,
) -> int:
    """A rank job submitted by a user, claimed and finished on the worker routes."""
    job_id = _post(client, criterion=criterion, **body)["id"]
    r = worker_client.post(f"{W}/jobs/{job_id}/claim", json={"worker": "w"})
    assert r.status_code == 200, r.text
    report = FinishReport(claim=r.json()["claim"], status=status, result=result)
    r = worker_client.post(f"{W}/jobs/{job_id}/finish", json=report.model_dump(mode="json"))
    assert r.status_code == 204, r.text
    return job_id


def test_compare_takes_the_newest_scores_per_criterion(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    um = unit_map_for(TEST_MODEL, 4)
    angles = unit_angles()  # later blocks more: ATTN.i 10+i, FFN.i 20+i
    reference = finished_finetune(db, angles=angles, result={"train_seconds": 12.5})
    # gradient_norm: the reverse of the angles' order; fisher: the same order, then a newer
    # fisher job with a shuffled order that must win; a failed one and another dataset's are
    # left out.
    reverse = {u.name: -angles[u.name] for u in um.units}
    _run(client, worker_client, GRADIENT_NORM, _scores(reverse, GRADIENT_NORM, 0.5))
    _run(client, worker_client, FISHER, _scores(angles, FISHER, 0.25))
    shuffled = {u.name: float((7 * i) % len(um.units)) for i, u in enumerate(um.units)}
    newest = _run(client, worker_client, FISHER, _scores(shuffled, FISHER, 0.75))
    _run(client, worker_client, FISHER, _scores(angles, FISHER, 9.0), status=JobStatus.FAILED)
    _run(client, worker_client, FISHER, _scores(angles, FISHER, 9.0), dataset="digits")
    job = JobPublic.model_validate(client.get(f"{JOBS}/{newest}").json())
    assert job.status == "succeeded" and job.result["units"][0]["name"] == "ATTN.0"

    r = client.get(
        f"{API_PREFIX}/criteria/compare",
        params={"model": TEST_MODEL, "dataset": "synthetic", "k": 2},
    )
    assert r.status_code == 200, r.text
    out = CriteriaComparison.model_validate(r.json())
    assert [c.criterion for c in out.criteria] == [ANGLE, GRADIENT_NORM, FISHER]
    assert [c.job_id for c in out.criteria][0] == reference.id
    assert out.criteria[2].job_id == newest
    assert [u.name for u in out.criteria[0].units] == um.unit_names  # in depth order
    assert out.cost == {ANGLE: 12.5, GRADIENT_NORM: 0.5, FISHER: 0.75}
    expected = compare(
        {
            ANGLE: _scores(angles, ANGLE, 12.5),
            GRADIENT_NORM: _scores(reverse, GRADIENT_NORM, 0.5),
            FISHER: _scores(shuffled, FISHER, 0.75),
        },
        2,
    )
    assert [p.model_dump() for p in out.pairs] == expected["pairs"]
    first = out.pairs[0]
    assert (first.a, first.b) == (ANGLE, GRADIENT_NORM)
    assert first.spearman == pytest.approx(-1.0) and first.topk_overlap == 0.0
    assert (out.k, out.order) == (2, "largest")

    # No k: half the smallest group (4 units per group here).
    default = client.get(
        f"{API_PREFIX}/criteria/compare", params={"model": TEST_MODEL, "dataset": "synthetic"}
    ).json()
    assert default["k"] == 2
    # Another model: nothing scored, no pairs.
    empty = client.get(
        f"{API_PREFIX}/criteria/compare",
        params={"model": "pft/vit-tiny-fmnist", "dataset": "synthetic"},
    ).json()
    assert (empty["criteria"], empty["pairs"], empty["cost"]) == ([], [], {})


@pytest.mark.parametrize(
    ("params", "loc"),
    [({"k": 0}, "k"), ({"order": "big"}, "order"), ({"k": "x"}, "k"), ({}, "model")],
)
def test_compare_refuses_bad_queries(client: TestClient, params: dict, loc: str) -> None:
    query = {"model": TEST_MODEL, "dataset": "synthetic", **params}
    if loc == "model":
        query.pop("model")
    r = client.get(f"{API_PREFIX}/criteria/compare", params=query)
    assert r.status_code == 422, r.text
    assert any(loc in e["loc"] for e in r.json()["detail"]), r.json()


def test_compare_needs_the_token(client: TestClient) -> None:
    query = {"model": TEST_MODEL, "dataset": "synthetic"}
    r = client.get(f"{API_PREFIX}/criteria/compare", params=query, headers={"Authorization": ""})
    assert r.status_code == 401

"""``/soups``: only succeeded fine-tuning jobs of one base model and dataset go into a soup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import claims
from backend.core.config import ApiSettings
from backend.db.models import Job
from backend.db.session import get_engine, make_sessionmaker
from backend.schemas import PretrainCreate
from backend.submit import submit_pretrain
from contract.api import FinishReport, SoupOutcome, SoupPublic
from pft.jobs.specs import SoupSpec
from pft.soups.registry import MERGE_METHODS
from tests.utils.factories import claimed, finished_finetune, queued_finetune

_NAMES = [repr(m) for m in MERGE_METHODS]
ACCEPTED_METHODS = ", ".join(_NAMES[:-1]) + " or " + _NAMES[-1]  # every registered method


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def test_soup_of_succeeded_jobs(client: TestClient, db: Session) -> None:
    a, b = finished_finetune(db, seed=0), finished_finetune(db, seed=1)
    body = {"ingredients": [a.id, b.id], "method": "greedy", "shifts": ["blur:2"]}
    r = client.post("/api/v1/soups", json=body)
    assert r.status_code == 201, r.text
    soup = r.json()
    assert soup["status"] == "queued" and soup["ingredients"] == [a.id, b.id]
    job = client.get(f"/api/v1/jobs/{soup['id']}").json()
    assert job["kind"] == "soup" and job["dataset"] == "synthetic"
    assert job["config"] == SoupSpec(**body).to_dict()
    trace = [
        {"order": 0, "ingredient": 0, "job_id": a.id, "candidate_score": 0.8, "accepted": True}
    ]
    claim = claimed(db, db.get(Job, soup["id"]))
    outcome = SoupOutcome(trace=trace, score_in=0.85, scores_out={"blur:2": 0.7})
    report = FinishReport(claim=claim, status="succeeded", soup=outcome)
    assert claims.finish_job(db, job_id=soup["id"], claim=claim, report=report)
    got = SoupPublic.model_validate(client.get(f"/api/v1/soups/{soup['id']}").json())
    assert (got.trace, got.score_in, got.scores_out) == (trace, 0.85, {"blur:2": 0.7})
    assert got.status == "succeeded"
    assert client.get(f"/api/v1/soups/{a.id}").status_code == 404  # a job, but not a soup


def test_soup_through_post_jobs(client: TestClient, db: Session) -> None:
    a, b = finished_finetune(db, seed=0), finished_finetune(db, seed=1)
    r = client.post("/api/v1/jobs", json={"kind": "soup", "ingredients": [a.id, b.id]})
    assert r.status_code == 201
    assert r.json()["config"]["method"] == next(iter(MERGE_METHODS))  # the registry's default


@pytest.mark.parametrize(
    ("make_bad", "words"),
    [
        (lambda db: queued_finetune(db), "is queued"),
        (lambda db: finished_finetune(db, status="failed"), "is failed"),
        (lambda db: finished_finetune(db, dataset="digits"), "on digits"),
        (lambda db: submit_pretrain(db, PretrainCreate(kind="pretrain")), "pretrain job"),
    ],
)
def test_soup_rules_name_the_offending_job(
    client: TestClient, db: Session, make_bad, words: str
) -> None:
    good = finished_finetune(db)
    bad = make_bad(db)
    db.commit()
    r = client.post("/api/v1/soups", json={"ingredients": [good.id, bad.id]})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "ingredients", 1]
    assert f"job {bad.id}" in error["msg"] and words in error["msg"]
    assert client.get("/api/v1/jobs", params={"kind": "soup"}).json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"ingredients": [1]}, "at least 2"),
        ({"ingredients": [1, 1]}, "distinct"),
        ({"ingredients": [999998, 999999]}, "job 999998 does not exist"),
        ({"ingredients": [1, 2], "method": "best"}, ACCEPTED_METHODS),
        ({"ingredients": [1, 2], "params": {"x": 1}}, "takes no parameter 'x'"),
        ({"ingredients": [1, 2], "shifts": ["blur:9"]}, "severity must be one of"),
    ],
)
def test_soup_request_validation(client: TestClient, body: dict, words: str) -> None:
    r = client.post("/api/v1/soups", json=body)
    assert r.status_code == 422
    assert words in r.json()["detail"][0]["msg"], r.json()


def test_soup_ingredients_must_share_their_head_initialisation(
    client: TestClient, db: Session
) -> None:
    a = finished_finetune(db, seed=0)
    b = finished_finetune(db, seed=1, head_seed=1)
    r = client.post("/api/v1/soups", json={"ingredients": [a.id, b.id], "method": "uniform"})
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "ingredients", 1]
    assert "head_seed 1" in error["msg"] and "share their head initialisation" in error["msg"]

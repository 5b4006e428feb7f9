"""``/soups``: only succeeded fine-tuning jobs of one base model and dataset go into a soup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import crud
from backend.core.config import Settings
from backend.db.session import get_engine, make_sessionmaker
from tests.utils.factories import finished_finetune, queued_finetune


@pytest.fixture
def db(settings: Settings) -> Iterator[Session]:
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
    assert job["kind"] == "soup" and job["config"] == body and job["dataset"] == "synthetic"
    trace = [{"order": 0, "job_id": a.id, "candidate_score": 0.8, "accepted": True}]
    crud.record_soup_result(
        db, job_id=soup["id"], trace=trace, score_in=0.85, scores_out={"blur:2": 0.7}
    )
    got = client.get(f"/api/v1/soups/{soup['id']}").json()
    assert (
        got["trace"] == trace and got["score_in"] == 0.85 and got["scores_out"] == {"blur:2": 0.7}
    )
    assert client.get(f"/api/v1/soups/{a.id}").status_code == 404  # a job, but not a soup


def test_soup_through_post_jobs(client: TestClient, db: Session) -> None:
    a, b = finished_finetune(db, seed=0), finished_finetune(db, seed=1)
    r = client.post("/api/v1/jobs", json={"kind": "soup", "ingredients": [a.id, b.id]})
    assert r.status_code == 201 and r.json()["config"]["method"] == "uniform"


@pytest.mark.parametrize(
    ("make_bad", "words"),
    [
        (lambda db: queued_finetune(db), "is queued"),
        (lambda db: finished_finetune(db, status="failed"), "is failed"),
        (lambda db: finished_finetune(db, dataset="digits"), "on digits"),
        (lambda db: crud.create_job(db, kind="pretrain", config={}), "pretrain job"),
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
        ({"ingredients": [1, 2], "method": "best"}, "'uniform', 'greedy' or 'masked'"),
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
    b = finished_finetune(db, seed=1)
    b.config = {**b.config, "hparams": {**b.config["hparams"], "head_seed": 1}}
    db.commit()
    r = client.post("/api/v1/soups", json={"ingredients": [a.id, b.id], "method": "uniform"})
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "ingredients", 1]
    assert "head_seed 1" in error["msg"] and "share their head initialisation" in error["msg"]

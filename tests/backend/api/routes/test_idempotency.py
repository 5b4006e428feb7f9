"""Idempotency keys on the submitting routes, and requests refused before they are written:
too many jobs in one experiment, a dataset folder that is a symlink loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.config import ApiSettings
from backend.db.models import Experiment, IdempotencyKey, Job
from backend.db.session import get_engine, make_sessionmaker
from backend.idempotency import HEADER, REPLAYED
from pft.model_catalog import TEST_MODEL
from tests.utils.factories import finished_finetune

JOB = {"kind": "finetune", "model": TEST_MODEL, "dataset": "synthetic"}
EXPERIMENT = {
    "model": TEST_MODEL,
    "dataset": "synthetic",
    "strategies": [{"name": "full"}, {"name": "attn_only"}],
    "seeds": [0, 1],
    "hparams": {"epochs": 1},
}


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _count(db: Session, model: type) -> int:
    db.rollback()  # a fresh snapshot
    return db.scalar(select(func.count()).select_from(model))


def test_a_retried_job_submission_answers_the_first_job(client: TestClient, db: Session) -> None:
    key = {HEADER: "retry-1"}
    first = client.post("/api/v1/jobs", json=JOB, headers=key)
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    again = client.post("/api/v1/jobs", json=JOB, headers=key)
    assert again.status_code == 201, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert _count(db, Job) == 1 and _count(db, IdempotencyKey) == 1
    # Without a key, or with another one, the same body is a new job.
    assert client.post("/api/v1/jobs", json=JOB).json()["id"] != first.json()["id"]
    other = client.post("/api/v1/jobs", json=JOB, headers={HEADER: "retry-2"})
    assert other.json()["id"] not in {first.json()["id"]}
    assert _count(db, Job) == 3


def test_a_key_reused_with_another_body_is_a_422_naming_the_header(
    client: TestClient, db: Session
) -> None:
    key = {HEADER: "k"}
    assert client.post("/api/v1/jobs", json=JOB, headers=key).status_code == 201
    r = client.post("/api/v1/jobs", json={**JOB, "hparams": {"epochs": 2}}, headers=key)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["header", HEADER]
    assert "different request" in error["msg"]
    assert _count(db, Job) == 1
    # Keys are per route: the same key on /experiments is a different request, not a reuse.
    r = client.post("/api/v1/experiments", json=EXPERIMENT, headers=key)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("bad", ["", "x" * 201, "a key"])
def test_a_malformed_key_is_a_422_naming_the_header(
    client: TestClient, db: Session, bad: str
) -> None:
    r = client.post("/api/v1/jobs", json=JOB, headers={HEADER: bad})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["header", HEADER]
    assert _count(db, Job) == 0


def test_a_retried_experiment_answers_the_same_experiment_and_jobs(
    client: TestClient, db: Session
) -> None:
    key = {HEADER: "exp-1"}
    first = client.post("/api/v1/experiments", json=EXPERIMENT, headers=key)
    assert first.status_code == 201, first.text
    again = client.post("/api/v1/experiments", json=EXPERIMENT, headers=key)
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.json()["experiment"]["id"] == first.json()["experiment"]["id"]
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    assert _count(db, Experiment) == 1 and _count(db, Job) == 4


def test_a_retried_soup_answers_the_same_soup(client: TestClient, db: Session) -> None:
    a, b = finished_finetune(db, seed=0), finished_finetune(db, seed=1)
    body, key = {"ingredients": [a.id, b.id], "method": "uniform"}, {HEADER: "soup-1"}
    first = client.post("/api/v1/soups", json=body, headers=key)
    assert first.status_code == 201, first.text
    again = client.post("/api/v1/soups", json=body, headers=key)
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert _count(db, Job) == 3


def test_a_refused_submission_leaves_its_key_unused(client: TestClient, db: Session) -> None:
    key = {HEADER: "after-a-422"}
    bad = client.post("/api/v1/jobs", json={**JOB, "model": "vit-nope"}, headers=key)
    assert bad.status_code == 422
    good = client.post("/api/v1/jobs", json=JOB, headers=key)
    assert good.status_code == 201 and REPLAYED not in good.headers


def test_a_concurrent_duplicate_is_rolled_back_and_answers_the_winner(
    client: TestClient, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests with one key that both miss the lookup: the later commit hits the unique
    key, its job is rolled back and it answers the first one's job."""
    import backend.idempotency as idem

    key = {HEADER: "race"}
    first = client.post("/api/v1/jobs", json=JOB, headers=key).json()
    real_begin = idem.begin
    calls = {"n": 0}

    def blind_first_lookup(session, *, route, key, request):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 1:  # as if the winner had not committed yet
            session.info[idem._PENDING] = (route, key, idem._fingerprint(request))
            return None
        return real_begin(session, route=route, key=key, request=request)

    monkeypatch.setattr(idem, "begin", blind_first_lookup)
    again = client.post("/api/v1/jobs", json=JOB, headers=key)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first["id"] and again.headers[REPLAYED] == "true"
    assert _count(db, Job) == 1


def test_too_many_jobs_in_one_experiment_is_a_422_naming_the_fields(
    client: TestClient, db: Session, settings: ApiSettings
) -> None:
    body = {
        **EXPERIMENT,
        "strategies": [{"name": "full"}] * 16 + [{"name": "attn_only"}] * 16,
        "seeds": list(range(9)),
    }
    assert settings.max_jobs_per_experiment == 256  # 32 x 9 = 288 is one experiment too many
    r = client.post("/api/v1/experiments", json=body)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "seeds"]
    for word in ("strategies", "seeds", "288", "256"):
        assert word in error["msg"], error
    assert _count(db, Job) == 0 and _count(db, Experiment) == 0


def test_a_dataset_folder_in_a_symlink_loop_is_a_422(
    client: TestClient, db: Session, settings: ApiSettings
) -> None:
    root = settings.resolved_datasets_dir
    root.mkdir(parents=True, exist_ok=True)
    (root / "loop").symlink_to(root / "loop")
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    for name in ("loop", "a", "loop/x"):
        r = client.post("/api/v1/jobs", json={**JOB, "dataset": f"imagefolder:{name}"})
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert "dataset" in error["loc"], error
    assert _count(db, Job) == 0

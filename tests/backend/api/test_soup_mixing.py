"""A soup's per-unit mixing weights: sent by the worker with its finish, stored with the soup
(``soups.mixing``, migration 0004) and served by ``GET /soups/{id}``; soups without any (an
averaging method, a worker that sends none, a soup recorded before 0004) answer ``{}``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.config import ApiSettings
from backend.db.session import dispose_engine, get_engine, make_sessionmaker
from contract.api import Claim, FinishReport, SoupOutcome, SoupPublic
from contract.vocab import API_PREFIX, WORKER_ROUTES, JobStatus
from tests.backend.test_migrations import _alembic
from tests.utils.factories import finished_finetune

W = f"{API_PREFIX}{WORKER_ROUTES}"


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _claimed_soup(client: TestClient, worker_client: TestClient, db: Session) -> tuple[int, str]:
    a, b = finished_finetune(db, seed=0), finished_finetune(db, seed=1)
    r = client.post(f"{API_PREFIX}/soups", json={"ingredients": [a.id, b.id]})
    assert r.status_code == 201, r.text
    soup_id = r.json()["id"]
    r = worker_client.post(f"{W}/jobs/{soup_id}/claim", json={"worker": "gpu-1"})
    assert r.status_code == 200, r.text
    return soup_id, Claim.model_validate(r.json()).claim


def _finish(worker_client: TestClient, soup_id: int, claim: str, outcome: SoupOutcome) -> None:
    report = FinishReport(claim=claim, status=JobStatus.SUCCEEDED, soup=outcome)
    r = worker_client.post(f"{W}/jobs/{soup_id}/finish", json=report.model_dump(mode="json"))
    assert r.status_code == 204, r.text


# What a TIES merge of two ingredients reports (`pft.soups.ties`): the kept fraction per unit,
# the units in depth order, the head last; a unit tuned by one ingredient only.
MIXING = {
    "weight": "kept",
    "density": 0.4,
    "scale": 1.0,
    "units": {
        "ATTN.0": {"weight": 0.35, "ingredients": 2},
        "FFN.1": {"weight": 0.4, "ingredients": 1},
        "head": {"weight": 0.3125, "ingredients": 2},
    },
}


def test_mixing_sent_with_the_finish_is_served_with_the_soup(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    soup_id, claim = _claimed_soup(client, worker_client, db)
    _finish(worker_client, soup_id, claim, SoupOutcome(score_in=0.8, mixing=MIXING))
    got = SoupPublic.model_validate(client.get(f"{API_PREFIX}/soups/{soup_id}").json())
    assert got.status == JobStatus.SUCCEEDED and got.score_in == 0.8
    assert got.mixing == MIXING
    assert list(got.mixing["units"]) == ["ATTN.0", "FFN.1", "head"]  # the order is kept
    # A retried finish of the same claim changes nothing, not even with other weights.
    other = SoupOutcome(score_in=0.1, mixing={"weight": "t", "units": {}})
    _finish(worker_client, soup_id, claim, other)
    assert client.get(f"{API_PREFIX}/soups/{soup_id}").json()["mixing"] == MIXING


def test_a_soup_finished_without_mixing_serves_an_empty_one(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    soup_id, claim = _claimed_soup(client, worker_client, db)
    assert client.get(f"{API_PREFIX}/soups/{soup_id}").json()["mixing"] == {}  # still queued
    r = worker_client.post(
        f"{W}/jobs/{soup_id}/finish",
        json={"claim": claim, "status": "succeeded", "soup": {"score_in": 0.7, "trace": []}},
    )
    assert r.status_code == 204, r.text
    assert client.get(f"{API_PREFIX}/soups/{soup_id}").json()["mixing"] == {}


def test_soups_recorded_before_0004_get_empty_mixing(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    _alembic(url, "upgrade", "0003")
    with get_engine(url).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, kind, status, config, progress, progress_info, attempts,"
                " cancel_requested, created_at) VALUES (1, 'soup', 'succeeded', '{}', 1.0, '{}',"
                " 1, false, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO soups (id, job_id, method, ingredients, shifts, trace, scores_out)"
                " VALUES (1, 1, 'x', '[2, 3]', '[]', '[]', '{}')"
            )
        )
    _alembic(url, "upgrade", "head")
    soups = sa.table("soups", sa.column("id"), sa.column("mixing", sa.JSON))
    with get_engine(url).connect() as conn:
        assert conn.execute(sa.select(soups.c.mixing)).scalar_one() == {}
    _alembic(url, "downgrade", "0003")
    with get_engine(url).connect() as conn:
        assert "mixing" not in {c["name"] for c in sa.inspect(conn).get_columns("soups")}
    dispose_engine(url)

"""``POST /preview``: one strategy resolved on one model by the API, nothing written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.config import ApiSettings
from backend.db.session import get_engine, make_sessionmaker
from contract.api import SelectionPublic
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.strategies import resolve_strategy
from tests.utils.factories import finished_finetune, unit_angles

BASE = {"model": TEST_MODEL, "dataset": "synthetic"}


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _preview(client: TestClient, strategy: dict, **body) -> SelectionPublic:
    r = client.post("/api/v1/preview", json={**BASE, **body, "strategy": strategy})
    assert r.status_code == 200, r.text
    return SelectionPublic.model_validate(r.json())


def test_a_strategy_without_parameters(client: TestClient) -> None:
    got = _preview(client, {"name": "attn_only"})
    expected = resolve_strategy(unit_map_for(TEST_MODEL, 4), "attn_only")
    assert got.units == list(expected.units) and got.tuned_params == expected.tuned_params
    assert got.description and 0 < got.tuned_fraction < 1
    assert client.get("/api/v1/jobs").json()["total"] == 0


def test_custom_units_come_back_in_depth_order(client: TestClient) -> None:
    got = _preview(client, {"name": "custom", "units": ["FFN.3", "ATTN.0"]})
    assert got.units == ["ATTN.0", "FFN.3"] and got.params == {"units": ["ATTN.0", "FFN.3"]}


def test_angle_topk_without_a_reference_job_is_provisional(client: TestClient) -> None:
    r = client.post("/api/v1/preview", json={**BASE, "strategy": {"name": "angle_topk", "k": 2}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["provisional"] is True
    assert len(body["units"]) == 4 and "angles" not in body["params"]
    assert body["params"] == {"k": 2, "order": "smallest"}


def test_angle_topk_with_a_reference_job_ranks_by_its_angles(
    client: TestClient, db: Session
) -> None:
    ref = finished_finetune(db)
    strategy = {"name": "angle_topk", "k": 2, "order": "largest", "reference_job": ref.id}
    r = client.post("/api/v1/preview", json={**BASE, "strategy": strategy})
    assert r.status_code == 200, r.text
    assert r.json()["provisional"] is False
    got = SelectionPublic.model_validate(r.json())
    um = unit_map_for(TEST_MODEL, 4)
    expected = resolve_strategy(um, "angle_topk", k=2, order="largest", angles=unit_angles())
    assert got.units == list(expected.units) == ["ATTN.2", "FFN.2", "ATTN.3", "FFN.3"]
    assert got.params == {"k": 2, "order": "largest", "reference_job": ref.id}


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        (
            {"strategy": {"name": "angle_topk", "k": 0}},
            ["body", "strategy", "k"],
            "greater than or equal to 1",
        ),
        ({"strategy": {"name": "angle_topk"}}, ["body", "strategy", "k"], "needs k"),
        ({"strategy": {"name": "custom", "units": ["X.1"]}}, ["body", "strategy", "units"], "X"),
        ({"strategy": {"name": "nope"}}, ["body", "strategy", "name"], "unknown strategy"),
        (
            {"strategy": {"name": "angle_topk", "k": 1, "reference_job": 999999}},
            ["body", "strategy", "reference_job"],
            "does not exist",
        ),
        (
            {"model": "vit_giant_patch14_224", "strategy": {"name": "full"}},
            ["body", "model"],
            "no shape table",
        ),
    ],
)
def test_bad_previews_are_422_naming_the_field(
    client: TestClient, body: dict, loc: list, words: str
) -> None:
    r = client.post("/api/v1/preview", json={**BASE, **body})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == loc and words in error["msg"], error


def test_a_k_larger_than_a_group_is_previewed_with_a_note(client: TestClient) -> None:
    got = _preview(client, {"name": "angle_topk", "k": 9})
    assert got.provisional
    assert any("whole group" in note for note in got.notes), got.notes
    assert len(got.units) == 8  # both 4-unit groups of the test model, whole

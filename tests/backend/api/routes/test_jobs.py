"""``/jobs``: submission, validation, listing, results and the cancel/retry lifecycle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import crud
from backend.core.config import Settings
from backend.db.session import get_engine, make_sessionmaker
from backend.enqueue import broker_job_ids
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.strategies import resolve_strategy
from tests.utils.factories import finished_finetune, unit_angles

FT = {"kind": "finetune", "model": TEST_MODEL, "dataset": "synthetic"}


@pytest.fixture
def db(settings: Settings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _post(client: TestClient, **body) -> dict:
    r = client.post("/api/v1/jobs", json={**FT, **body})
    assert r.status_code == 201, r.text
    return r.json()


def _error(client: TestClient, body: dict, path: str = "/api/v1/jobs") -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    return error


def test_submit_finetune_queues_and_enqueues(client: TestClient, settings: Settings) -> None:
    job = _post(client, strategy={"name": "attn_only"}, hparams={"epochs": 2, "seed": 5})
    assert job["status"] == "queued" and job["kind"] == "finetune"
    assert job["config"]["strategy"] == {"name": "attn_only"}
    assert job["config"]["hparams"]["epochs"] == 2 and job["config"]["hparams"]["lr"] == 1e-3
    assert job["seed"] == 5
    expected = resolve_strategy(unit_map_for(TEST_MODEL, 4), "attn_only")
    assert job["tuned_params"] == expected.tuned_params
    assert job["total_params"] == expected.total_params
    assert broker_job_ids(settings=settings) == {job["id"]}
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_default_strategy_is_full_and_pretrain_jobs(client: TestClient) -> None:
    assert _post(client)["strategy"] == "full"
    r = client.post("/api/v1/jobs", json={"kind": "pretrain", "epochs": 2})
    assert r.status_code == 201
    assert r.json()["config"] == {"model": "pft/vit-tiny-fmnist", "epochs": 2}


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"model": "vit-nope"}, "model", ["unknown model", "pft/vit-micro"]),
        ({"dataset": "mnistt"}, "dataset", ["unknown dataset", "synthetic", "digits"]),
        ({"dataset": "imagefolder:../../etc"}, "dataset", ["outside"]),
        ({"strategy": {"name": "attn"}}, "name", ["unknown strategy", "attn_only"]),
        ({"strategy": {"name": "attn_only", "k": 3}}, "k", ["takes no parameter 'k'"]),
        ({"hparams": {"epochs": 0}}, "epochs", ["greater than or equal to 1"]),
        ({"hparams": {"lr": 5}}, "lr", ["less than or equal to 1"]),
        ({"hparams": {"batch_size": 10**6}}, "batch_size", ["4096"]),
        ({"hparams": {"momentum": 0.9}}, "momentum", ["Extra inputs"]),
        ({"shifts": ["fog"]}, "shifts", ["unknown shift", "gaussian_noise"]),
        ({"model_overrides": {"depth": 2, "foo": 1}}, "model_overrides", ["accepted: img_size"]),
        ({"strategy": {"name": "custom", "units": ["ATTN.9"]}}, "strategy", ["ATTN.0..ATTN.3"]),
        ({"strategy": {"name": "custom"}}, "units", ["needs units"]),
        ({"strategy": {"name": "angle_topk", "k": 2}}, "reference_job", ["full fine-tuning"]),
        ({"strategy": {"name": "full", "reference_job": 1}}, "reference_job", ["only"]),
        ({"strategy": {"name": "angle_topk", "k": 2, "order": "big"}}, "order", ["'largest'"]),
        ({"hparams": {"epochs": True}}, "epochs", ["valid integer"]),
        ({"model_overrides": {"depth": True}}, "model_overrides", ["valid"]),
        ({"model_overrides": {"img_size": 18}}, "body", ["multiple of patch_size 4"]),
        ({"model_overrides": {"embed_dim": 33}}, "body", ["divisible by num_heads 2"]),
        (
            {"model": "vit_base_patch16_224", "model_overrides": {"img_size": 7}},
            "body",
            ["img_size 7 must be a multiple of patch_size 16"],
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client: TestClient, body: dict, loc: str, words: list[str]
) -> None:
    error = _error(client, {**FT, **body})
    assert loc in error["loc"], error
    for word in words:
        assert word in error["msg"], error
    assert "Traceback" not in error["msg"]
    assert client.get("/api/v1/jobs").json()["total"] == 0


def test_unknown_kind_lists_the_accepted_kinds(client: TestClient) -> None:
    error = _error(client, {**FT, "kind": "train"})
    assert "'finetune', 'pretrain', 'soup'" in error["msg"]


def test_custom_units(client: TestClient) -> None:
    job = _post(client, strategy={"name": "custom", "units": ["FFN.3", "ATTN.0"]})
    assert job["config"]["strategy"] == {"name": "custom", "units": ["ATTN.0", "FFN.3"]}


def test_angle_topk_uses_the_reference_jobs_angles(client: TestClient, db: Session) -> None:
    ref = finished_finetune(db)
    job = _post(client, strategy={"name": "angle_topk", "k": 2, "reference_job": ref.id})
    strategy = job["config"]["strategy"]
    assert strategy["reference_job"] == ref.id and strategy["order"] == "smallest"
    assert strategy["angles"] == unit_angles()
    um = unit_map_for(TEST_MODEL, 4)
    expected = resolve_strategy(um, "angle_topk", k=2, order="smallest", angles=unit_angles())
    assert expected.units == ("ATTN.0", "FFN.0", "ATTN.1", "FFN.1")
    assert job["tuned_params"] == expected.tuned_params


@pytest.mark.parametrize(
    ("ref_kw", "words"),
    [
        ({"strategy": "attn_only"}, "with strategy attn_only"),
        ({"status": "failed"}, "is failed"),
        ({"dataset": "digits"}, "on digits"),
    ],
)
def test_angle_topk_rejects_unsuitable_reference_jobs(
    client: TestClient, db: Session, ref_kw: dict, words: str
) -> None:
    ref = finished_finetune(db, **ref_kw)
    error = _error(
        client, {**FT, "strategy": {"name": "angle_topk", "k": 2, "reference_job": ref.id}}
    )
    assert error["loc"][-1] == "reference_job"
    assert f"job {ref.id}" in error["msg"] and words in error["msg"]


def test_angle_topk_k_is_checked_against_the_groups(client: TestClient, db: Session) -> None:
    ref = finished_finetune(db)
    body = {**FT, "strategy": {"name": "angle_topk", "k": 5, "reference_job": ref.id}}
    assert "from 1 to 4" in _error(client, body)["msg"]
    missing = {**body, "strategy": {"name": "angle_topk", "k": 2, "reference_job": 10**6}}
    assert "does not exist" in _error(client, missing)["msg"]


def test_list_filter_and_paginate(client: TestClient, db: Session) -> None:
    ids = [_post(client)["id"] for _ in range(3)]
    done = finished_finetune(db)
    page = client.get("/api/v1/jobs", params={"limit": 2}).json()
    assert page["total"] == 4 and [j["id"] for j in page["items"]] == [done.id, ids[2]]
    rest = client.get("/api/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert [j["id"] for j in rest["items"]] == [ids[1], ids[0]]
    queued = client.get("/api/v1/jobs", params={"status": "queued", "kind": "finetune"}).json()
    assert queued["total"] == 3
    assert client.get("/api/v1/jobs", params={"status": "done"}).status_code == 422
    assert client.get("/api/v1/jobs", params={"limit": 501}).status_code == 422


def test_metrics_and_angles(client: TestClient, db: Session) -> None:
    job = finished_finetune(db, test_acc=0.9)
    crud.record_angles(db, job_id=job.id, epoch=1, angles={"units": {"ATTN.0": 1.5}})
    metrics = client.get(f"/api/v1/jobs/{job.id}/metrics").json()
    assert [(m["epoch"], m["test_acc"]) for m in metrics] == [(1, 0.45), (2, 0.9)]
    angles = client.get(f"/api/v1/jobs/{job.id}/angles").json()
    assert angles["final"]["units"] == unit_angles()
    assert angles["epochs"] == [{"epoch": 1, "units": {"ATTN.0": 1.5}, "tensors": {}}]
    crud.record_artifact(
        db,
        job_id=job.id,
        kind="delta",
        location="1/delta.safetensors",
        size_bytes=123,
        sha256="a" * 64,
    )
    [artifact] = client.get(f"/api/v1/jobs/{job.id}/artifacts").json()
    assert artifact["size_bytes"] == 123


def test_missing_jobs_are_404(client: TestClient) -> None:
    for path in ("", "/metrics", "/angles", "/artifacts"):
        r = client.get(f"/api/v1/jobs/999999{path}")
        assert r.status_code == 404 and r.json()["detail"] == "no job 999999"
    assert client.post("/api/v1/jobs/999999/cancel").status_code == 404
    assert client.get("/api/v1/jobs/0").status_code == 422
    assert client.get(f"/api/v1/jobs/{2**40}").status_code == 422


def test_cancel_and_retry(client: TestClient, db: Session, settings: Settings) -> None:
    job = _post(client)
    r = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    r = client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert client.post(f"/api/v1/jobs/{job['id']}/retry").status_code == 409
    running = _post(client)
    crud.claim_job(db, job_id=running["id"], worker="w")
    r = client.post(f"/api/v1/jobs/{running['id']}/cancel")
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert crud.is_cancel_requested(db, job_id=running["id"])


def test_a_dead_broker_leaves_the_job_queued_for_the_reconciler(
    settings: Settings, db: Session
) -> None:
    import socket

    from backend.main import create_app
    from backend.reconciler import reconcile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})
    with TestClient(create_app(dead)) as c:
        r = c.post(
            "/api/v1/jobs", json=FT, headers={"Authorization": f"Bearer {settings.api_token}"}
        )
    assert r.status_code == 201 and r.json()["status"] == "queued"
    assert broker_job_ids(settings=settings) == set()
    assert reconcile(db, settings=settings).enqueued == [r.json()["id"]]
    assert broker_job_ids(settings=settings) == {r.json()["id"]}

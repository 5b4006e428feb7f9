"""``/jobs``: submission, validation, listing, results and the cancel/retry lifecycle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import claims
from backend.core.config import ApiSettings
from backend.db.session import get_engine, make_sessionmaker
from backend.enqueue import broker_job_ids
from contract.api import AnglesPublic, ArtifactReport, EpochRecord, JobPublic
from contract.vocab import JobStatus
from pft.jobs.specs import FinetuneSpec, PretrainSpec, spec_from_dict
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.strategies import STRATEGIES, resolve_strategy
from tests.utils.factories import (
    claimed,
    finished_finetune,
    queued_finetune,
    tensor_row,
    unit_angles,
    unit_rows,
)

from ...conftest import TOKEN

FT = {"kind": "finetune", "model": TEST_MODEL, "dataset": "synthetic"}


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
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


def test_submit_finetune_queues_and_enqueues(client: TestClient, settings: ApiSettings) -> None:
    job = _post(client, strategy={"name": "attn_only"}, hparams={"epochs": 2, "seed": 5})
    assert job["status"] == "queued" and job["kind"] == "finetune"
    # The stored config is the job's spec, verbatim.
    spec = spec_from_dict(job["kind"], job["config"])
    assert isinstance(spec, FinetuneSpec) and spec.to_dict() == job["config"]
    assert (spec.strategy, spec.strategy_params) == ("attn_only", {})
    assert spec.hparams.epochs == 2 and spec.hparams.lr == 1e-3 and spec.hparams.seed == 5
    assert job["seed"] == 5
    expected = resolve_strategy(unit_map_for(TEST_MODEL, 4), "attn_only")
    assert job["tuned_params"] == expected.tuned_params
    assert job["total_params"] == expected.total_params
    assert broker_job_ids(settings=settings) == {job["id"]}
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_default_strategy_is_full_and_pretrain_jobs(client: TestClient) -> None:
    assert _post(client)["strategy"] == "full" == next(iter(STRATEGIES))
    r = client.post("/api/v1/jobs", json={"kind": "pretrain", "epochs": 2})
    assert r.status_code == 201
    assert r.json()["config"] == PretrainSpec(epochs=2).to_dict()
    assert r.json()["model"] == "pft/vit-tiny-fmnist"


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"model": "vit-nope"}, "model", ["unknown model", "pft/vit-micro"]),
        ({"dataset": "mnistt"}, "dataset", ["unknown dataset", "synthetic", "digits"]),
        ({"dataset": "imagefolder:../../etc"}, "dataset", ["outside"]),
        ({"strategy": {"name": "attn"}}, "name", ["unknown strategy", "attn_only"]),
        ({"strategy": {"name": "attn_only", "k": 3}}, "k", ["takes no parameter 'k'"]),
        ({"strategy": {"name": "attn_only", "nope": 3}}, "nope", ["Extra inputs"]),
        ({"hparams": {"epochs": 0}}, "epochs", ["greater than or equal to 1"]),
        ({"hparams": {"lr": 5}}, "lr", ["less than or equal to 1"]),
        ({"hparams": {"batch_size": 10**6}}, "batch_size", ["4096"]),
        ({"hparams": {"momentum": 0.9}}, "momentum", ["Extra inputs"]),
        ({"shifts": ["fog"]}, "shifts", ["unknown shift", "gaussian_noise"]),
        ({"model_overrides": {"depth": 2, "foo": 1}}, "model_overrides", ["accepted: img_size"]),
        ({"strategy": {"name": "custom", "units": ["ATTN.9"]}}, "strategy", ["ATTN.0..ATTN.3"]),
        ({"strategy": {"name": "custom"}}, "units", ["needs units"]),
        ({"strategy": {"name": "angle_topk", "k": 2}}, "reference_job", ["full fine-tuning"]),
        (
            {"strategy": {"name": "full", "reference_job": 1}},
            "reference_job",
            ["takes no parameter 'reference_job'"],
        ),
        ({"strategy": {"name": "angle_topk", "k": 2, "order": "big"}}, "order", ["'largest'"]),
        ({"strategy": {"name": "angle_topk", "k": 0}}, "k", ["greater than or equal to 1"]),
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
    assert job["config"]["strategy"] == "custom"
    assert job["config"]["strategy_params"] == {"units": ["ATTN.0", "FFN.3"]}  # depth order


def test_angle_topk_uses_the_reference_jobs_angles(client: TestClient, db: Session) -> None:
    ref = finished_finetune(db)
    job = _post(client, strategy={"name": "angle_topk", "k": 2, "reference_job": ref.id})
    assert job["config"]["strategy"] == "angle_topk"
    params = job["config"]["strategy_params"]
    assert params["reference_job"] == ref.id and params["order"] == "smallest"
    assert params["angles"] == unit_angles()  # resolved once, at submission
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
    # A K larger than a group (4 units each here) tunes the whole group (`pft.strategies`).
    whole = client.post("/api/v1/jobs", json=body)
    assert whole.status_code == 201, whole.text
    four = _post(client, strategy={"name": "angle_topk", "k": 4, "reference_job": ref.id})
    assert whole.json()["tuned_params"] == four["tuned_params"]
    missing = {**body, "strategy": {"name": "angle_topk", "k": 2, "reference_job": 10**6}}
    assert "does not exist" in _error(client, missing)["msg"]
    no_k = _error(client, {**body, "strategy": {"name": "angle_topk", "reference_job": ref.id}})
    assert no_k["loc"] == ["body", "strategy", "k"] and "needs k" in no_k["msg"]


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


def test_metrics_and_full_angle_rows(client: TestClient, db: Session) -> None:
    from contract.api import FinishReport

    job = queued_finetune(db)
    claim = claimed(db, job)
    tensor = tensor_row("blocks.0.attn.qkv.weight", 2.5, "ATTN.0")
    record = EpochRecord(
        epoch=1, metrics={"test_acc": 0.45}, angles=[*unit_rows({"ATTN.0": 1.5}), tensor]
    )
    assert claims.record_epoch(db, job_id=job.id, claim=claim, record=record)
    artifact = ArtifactReport(
        kind="delta", location="1/delta.safetensors", size_bytes=123, sha256="a" * 64
    )
    report = FinishReport(
        claim=claim,
        status=JobStatus.SUCCEEDED,
        epochs=[EpochRecord(epoch=2, metrics={"test_acc": 0.9})],
        angles=unit_rows(unit_angles()),
        artifacts=[artifact],
    )
    assert claims.finish_job(db, job_id=job.id, claim=claim, report=report)
    metrics = client.get(f"/api/v1/jobs/{job.id}/metrics").json()
    assert [(m["epoch"], m["test_acc"]) for m in metrics] == [(1, 0.45), (2, 0.9)]
    angles = AnglesPublic.model_validate(client.get(f"/api/v1/jobs/{job.id}/angles").json())
    assert angles.final is not None and angles.final.tensors == []
    assert {r.name: r.angle_deg for r in angles.final.units} == unit_angles()
    assert angles.final.units == unit_rows(unit_angles())  # rel_change, group, block kept
    [epoch] = angles.epochs
    assert epoch.epoch == 1 and epoch.units == unit_rows({"ATTN.0": 1.5})
    assert epoch.tensors == [tensor] and epoch.tensors[0].part == "qkv"
    [listed] = client.get(f"/api/v1/jobs/{job.id}/artifacts").json()
    assert listed["size_bytes"] == 123
    assert JobPublic.model_validate(client.get(f"/api/v1/jobs/{job.id}").json()).progress == 1


def test_missing_jobs_are_404(client: TestClient) -> None:
    for path in ("", "/metrics", "/angles", "/artifacts"):
        r = client.get(f"/api/v1/jobs/999999{path}")
        assert r.status_code == 404 and r.json()["detail"] == "no job 999999"
    assert client.post("/api/v1/jobs/999999/cancel").status_code == 404
    assert client.get("/api/v1/jobs/0").status_code == 422
    assert client.get(f"/api/v1/jobs/{2**40}").status_code == 422


def test_cancel_and_retry(client: TestClient, db: Session, settings: ApiSettings) -> None:
    job = _post(client)
    r = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    r = client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert client.post(f"/api/v1/jobs/{job['id']}/retry").status_code == 409
    running = queued_finetune(db)
    claim = claimed(db, running)
    r = client.post(f"/api/v1/jobs/{running.id}/cancel")
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert claims.heartbeat(db, job_id=running.id, claim=claim) is True


def test_a_dead_broker_leaves_the_job_queued_for_the_reconciler(
    settings: ApiSettings, db: Session
) -> None:
    import socket

    from backend.main import create_app
    from backend.reconciler import reconcile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})
    with TestClient(create_app(dead)) as c:
        r = c.post("/api/v1/jobs", json=FT, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201 and r.json()["status"] == "queued"
    assert broker_job_ids(settings=settings) == set()
    assert reconcile(db, settings=settings).enqueued == [r.json()["id"]]
    assert broker_job_ids(settings=settings) == {r.json()["id"]}

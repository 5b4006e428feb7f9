"""The worker routes: claim, heartbeat (with the cancel flag), epoch and finish reports under a
claim, 409 for a claim that lost its job, and a credential of their own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import crud
from backend.core.config import ApiSettings
from backend.db.models import Job
from backend.db.session import get_engine, make_sessionmaker
from backend.main import create_app
from backend.reconciler import reconcile
from contract.api import (
    AnglesPublic,
    Claim,
    FinishReport,
    HeartbeatReply,
    JobPublic,
    SoupPublic,
    store_path,
)
from contract.vocab import API_PREFIX, WORKER_ROUTES, JobKind, JobStatus
from pft.jobs.specs import FinetuneSpec, spec_from_dict
from pft.model_catalog import TEST_MODEL, get_spec, shape_key, shape_table
from tests.utils.factories import (
    epoch_record,
    finished_finetune,
    queued_finetune,
    tensor_row,
    unit_angles,
    unit_rows,
)

from ...conftest import TOKEN, WORKER_TOKEN

W = f"{API_PREFIX}{WORKER_ROUTES}"


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _claim(worker_client: TestClient, job_id: int, worker: str = "gpu-1") -> Claim:
    r = worker_client.post(f"{W}/jobs/{job_id}/claim", json={"worker": worker})
    assert r.status_code == 200, r.text
    return Claim.model_validate(r.json())


def _epoch(claim: str, epoch: int, acc: float = 0.5) -> dict:
    record = epoch_record(epoch, acc, {"ATTN.0": 1.0 * epoch})
    return {"claim": claim, **record.model_dump(mode="json")}


def _finish(claim: str, **kw) -> dict:
    report = FinishReport(claim=claim, status=kw.pop("status", JobStatus.SUCCEEDED), **kw)
    return report.model_dump(mode="json")


def test_a_job_from_claim_to_finish(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    job = queued_finetune(db)
    claim = _claim(worker_client, job.id)
    assert (claim.job_id, claim.kind, claim.attempt, claim.inputs) == (
        job.id,
        JobKind.FINETUNE,
        1,
        {},
    )
    spec = spec_from_dict(claim.kind, claim.spec)
    assert isinstance(spec, FinetuneSpec) and claim.spec == job.config
    db.refresh(job)
    assert claim.origin == job.created_at.isoformat()  # tells it from another lab.db's job
    running = JobPublic.model_validate(client.get(f"{API_PREFIX}/jobs/{job.id}").json())
    assert (running.status, running.worker, running.attempts) == ("running", "gpu-1", 1)

    beat = {"claim": claim.claim, "progress": 0.25, "info": {"epoch": 1, "step": 3}}
    r = worker_client.post(f"{W}/jobs/{job.id}/heartbeat", json=beat)
    assert (
        r.status_code == 200 and HeartbeatReply.model_validate(r.json()).cancel_requested is False
    )
    after = JobPublic.model_validate(client.get(f"{API_PREFIX}/jobs/{job.id}").json())
    assert after.progress == 0.25 and after.progress_info == {"epoch": 1, "step": 3}
    assert after.heartbeat_at >= running.heartbeat_at  # the API's clock, never the worker's

    for _ in range(2):  # a retried epoch report writes the same rows
        r = worker_client.put(f"{W}/jobs/{job.id}/epochs/1", json=_epoch(claim.claim, 1))
        assert r.status_code == 204, r.text
    metrics = client.get(f"{API_PREFIX}/jobs/{job.id}/metrics").json()
    assert [m["epoch"] for m in metrics] == [1]

    final = [*unit_rows(unit_angles()), tensor_row("blocks.0.attn.qkv.weight", 4.0, "ATTN.0")]
    artifact = {"kind": "delta", "location": f"jobs/{job.id}/delta.safetensors"}
    report = _finish(
        claim.claim,
        result={"test_acc": 0.8},
        epochs=[epoch_record(1, 0.4), epoch_record(2, 0.8)],
        angles=final,
        artifacts=[{**artifact, "size_bytes": 10, "sha256": "b" * 64}],
    )
    for _ in range(2):  # a retried finish (the first answer was lost) is accepted again
        r = worker_client.post(f"{W}/jobs/{job.id}/finish", json=report)
        assert r.status_code == 204, r.text
    done = JobPublic.model_validate(client.get(f"{API_PREFIX}/jobs/{job.id}").json())
    assert (done.status, done.result, done.progress) == ("succeeded", {"test_acc": 0.8}, 1.0)
    metrics = client.get(f"{API_PREFIX}/jobs/{job.id}/metrics").json()
    assert [(m["epoch"], m["test_acc"]) for m in metrics] == [(1, 0.4), (2, 0.8)]
    angles = AnglesPublic.model_validate(client.get(f"{API_PREFIX}/jobs/{job.id}/angles").json())
    assert angles.final is not None and len(angles.final.tensors) == 1
    assert angles.final.units == unit_rows(unit_angles())
    [stored] = client.get(f"{API_PREFIX}/jobs/{job.id}/artifacts").json()
    assert stored["sha256"] == "b" * 64
    # Finished: every later report of this claim is refused.
    r = worker_client.post(f"{W}/jobs/{job.id}/heartbeat", json={"claim": claim.claim})
    assert r.status_code == 409 and "it is succeeded" in r.json()["detail"]
    r = worker_client.post(f"{W}/jobs/{job.id}/claim", json={"worker": "gpu-2"})
    assert r.status_code == 409 and "cannot be claimed" in r.json()["detail"]


def test_the_heartbeat_reply_carries_a_cancel(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    job = queued_finetune(db)
    claim = _claim(worker_client, job.id)
    assert client.post(f"{API_PREFIX}/jobs/{job.id}/cancel").json()["status"] == "running"
    r = worker_client.post(f"{W}/jobs/{job.id}/heartbeat", json={"claim": claim.claim})
    assert r.json() == {"cancel_requested": True}
    r = worker_client.post(
        f"{W}/jobs/{job.id}/finish", json=_finish(claim.claim, status=JobStatus.CANCELLED)
    )
    assert r.status_code == 204
    assert client.get(f"{API_PREFIX}/jobs/{job.id}").json()["status"] == "cancelled"


def test_a_cancelled_queued_job_is_not_claimable(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    job = queued_finetune(db)
    client.post(f"{API_PREFIX}/jobs/{job.id}/cancel")
    r = worker_client.post(f"{W}/jobs/{job.id}/claim", json={"worker": "w"})
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    assert worker_client.post(f"{W}/jobs/999999/claim", json={"worker": "w"}).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "heartbeat", lambda c: {"claim": c, "progress": 0.5}),
        ("put", "epochs/1", lambda c: _epoch(c, 1)),
        ("post", "finish", lambda c: _finish(c)),
    ],
)
def test_every_report_of_a_lost_claim_is_a_409_that_writes_nothing(
    settings: ApiSettings, db: Session, method: str, path: str, body
) -> None:
    """The reconciler re-queued the job after a stale heartbeat, and another worker took it."""
    quick = settings.model_copy(update={"heartbeat_stale_s": 0.2})
    with TestClient(create_app(quick), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {WORKER_TOKEN}"
        job = queued_finetune(db)
        old = _claim(c, job.id, "stopped")
        time.sleep(0.4)
        assert reconcile(db, settings=quick).requeued == [job.id]
        r = getattr(c, method)(f"{W}/jobs/{job.id}/{path}", json=body(old.claim))
        assert r.status_code == 409, r.text
        assert r.json()["detail"] == (
            f"job {job.id} is no longer owned by this claim (it was put back in the queue)"
        )
        new = _claim(c, job.id, "fresh")
        assert new.claim != old.claim and new.attempt == 2
        r = getattr(c, method)(f"{W}/jobs/{job.id}/{path}", json=body(old.claim))
        assert r.status_code == 409 and "another worker claimed it" in r.json()["detail"]
        r = c.post(f"{W}/jobs/{job.id}/heartbeat", json={"claim": "0" * 32})
        assert r.status_code == 409
        assert c.post(f"{W}/jobs/999999/heartbeat", json={"claim": "x"}).status_code == 404
    db.expire_all()
    fresh = db.get(Job, job.id)
    assert (fresh.status, fresh.worker, fresh.progress, fresh.result) == (
        "running",
        "fresh",
        0.0,
        None,
    )
    assert crud.get_metrics(db, job_id=job.id) == [] and crud.get_angles(db, job_id=job.id) == []


def test_a_redelivered_job_with_a_stale_heartbeat_is_claimed_again(
    settings: ApiSettings, db: Session
) -> None:
    quick = settings.model_copy(update={"heartbeat_stale_s": 0.2})
    with TestClient(create_app(quick), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {WORKER_TOKEN}"
        job = queued_finetune(db)
        first = _claim(c, job.id, "dead")
        assert c.post(f"{W}/jobs/{job.id}/claim", json={"worker": "w2"}).status_code == 409
        time.sleep(0.4)
        second = _claim(c, job.id, "w2")
        assert second.attempt == 2 and second.claim != first.claim
        r = c.post(f"{W}/jobs/{job.id}/finish", json=_finish(first.claim))
        assert r.status_code == 409 and "another worker claimed it" in r.json()["detail"]


def test_finish_validates_its_report(worker_client: TestClient, db: Session) -> None:
    job = queued_finetune(db)
    claim = _claim(worker_client, job.id)
    r = worker_client.post(
        f"{W}/jobs/{job.id}/finish", json={"claim": claim.claim, "status": "running"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "status"]
    r = worker_client.put(f"{W}/jobs/{job.id}/epochs/2", json=_epoch(claim.claim, 1))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "epoch"]
    r = worker_client.put(f"{W}/jobs/{job.id}/epochs/0", json=_epoch(claim.claim, 1))
    assert r.status_code == 422


def test_a_soup_claim_hands_out_its_ingredients_deltas(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    jobs = [finished_finetune(db, seed=seed) for seed in (0, 1)]
    ingredients = [j.id for j in jobs]
    soup = client.post(
        f"{API_PREFIX}/soups", json={"ingredients": ingredients, "method": "greedy"}
    ).json()
    claim = _claim(worker_client, soup["id"])
    assert claim.kind == JobKind.SOUP and set(claim.inputs) == {str(i) for i in ingredients}
    for job_id in ingredients:
        [delta] = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts").json()
        ref = claim.inputs[str(job_id)]
        assert (store_path(ref.location, job_id), ref.size_bytes, ref.sha256) == (
            delta["path"],
            delta["size_bytes"],
            delta["sha256"],
        )
    report = _finish(
        claim.claim,
        soup={"trace": [{"order": 0, "accepted": True}], "score_in": 0.9, "scores_out": {}},
        artifacts=[{"kind": "soup", "location": "s", "size_bytes": 1, "sha256": "c" * 64}],
    )
    assert worker_client.post(f"{W}/jobs/{soup['id']}/finish", json=report).status_code == 204
    got = SoupPublic.model_validate(client.get(f"{API_PREFIX}/soups/{soup['id']}").json())
    assert (got.status, got.score_in, got.trace) == (
        "succeeded",
        0.9,
        [{"order": 0, "accepted": True}],
    )


def test_shape_tables_reported_by_a_worker_serve_previews(
    client: TestClient, worker_client: TestClient
) -> None:
    name = "vit_huge_patch14_clip_224"  # not shipped, not cached on this host
    table = shape_table(get_spec(TEST_MODEL))
    body = {"key": shape_key(get_spec(name)), "model": name, "table": table}
    assert worker_client.put(f"{W}/shape-tables", json=body).status_code == 204
    r = client.get(f"{API_PREFIX}/models/{name}/units", params={"num_classes": 3})
    assert r.status_code == 200 and r.json()["unit_map"]["depth"] == 4


@pytest.mark.parametrize(
    ("path", "method"),
    [
        (f"{W}/jobs/1/claim", "post"),
        (f"{W}/jobs/1/heartbeat", "post"),
        (f"{W}/shape-tables", "put"),
    ],
)
def test_worker_routes_take_only_the_worker_token(
    worker_client: TestClient, path: str, method: str
) -> None:
    for auth in (f"Bearer {TOKEN}", "", "Bearer nope"):
        r = getattr(worker_client, method)(path, json={}, headers={"Authorization": auth})
        assert r.status_code == 401, (auth, r.text)
        assert "worker token" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/jobs", "/catalog/strategies", "/experiments"])
def test_user_routes_refuse_the_worker_token(worker_client: TestClient, path: str) -> None:
    r = worker_client.get(f"{API_PREFIX}{path}")
    assert r.status_code == 401 and "API token" in r.json()["detail"]


def _killed(worker_client: TestClient, job_id: int, claim: Claim) -> int:
    body = {"claim": claim.claim, "attempt": claim.attempt, "error": "out of memory: killed"}
    return worker_client.post(f"{W}/jobs/{job_id}/killed", json=body).status_code


def test_a_kill_for_memory_fails_the_job_once_and_a_repeat_is_answered_as_taken(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    job = queued_finetune(db)
    claim = _claim(worker_client, job.id)
    assert _killed(worker_client, job.id, claim) == 204
    shown = JobPublic.model_validate(client.get(f"{API_PREFIX}/jobs/{job.id}").json())
    assert (shown.status, shown.error, shown.attempts) == ("failed", "out of memory: killed", 1)
    assert _killed(worker_client, job.id, claim) == 204  # the parent retried a lost answer
    r = worker_client.post(f"{W}/jobs/{job.id}/claim", json={"worker": "gpu-2"})
    assert r.status_code == 409  # not retried


def test_a_kill_for_memory_after_the_reconciler_requeued_the_stalled_attempt_still_counts(
    client: TestClient, worker_client: TestClient, db: Session
) -> None:
    """The process stalled as memory ran out, its heartbeat went stale, the reconciler queued
    the job again; then the kernel killed it. Nobody has claimed it since: it fails."""
    job = queued_finetune(db)
    claim = _claim(worker_client, job.id)
    requeued, _, _ = crud.release_stale_jobs(db, stale_after_s=-60, max_attempts=3)
    assert requeued == [job.id]
    assert _killed(worker_client, job.id, claim) == 204
    db.expire_all()
    assert db.get(Job, job.id).status == JobStatus.FAILED


def test_a_kill_report_of_an_older_attempt_leaves_a_newer_one_alone(
    worker_client: TestClient, db: Session
) -> None:
    job = queued_finetune(db)
    first = _claim(worker_client, job.id)
    crud.release_stale_jobs(db, stale_after_s=-60, max_attempts=3)
    second = _claim(worker_client, job.id, worker="gpu-2")
    assert second.attempt == 2
    assert _killed(worker_client, job.id, first) == 409  # the second attempt runs on
    db.expire_all()
    assert db.get(Job, job.id).status == JobStatus.RUNNING
    forged = {"claim": "not-a-claim", "attempt": 2, "error": "x"}
    assert worker_client.post(f"{W}/jobs/{job.id}/killed", json=forged).status_code == 409

"""``/experiments``: strategies x seeds, caps, summaries over seeds and exports."""

from __future__ import annotations

import csv
import io
import statistics

from fastapi.testclient import TestClient

from backend import claims
from backend.core.config import ApiSettings
from backend.db.models import Job
from backend.db.session import get_engine, make_sessionmaker
from backend.enqueue import broker_job_ids
from contract.api import EpochRecord, ExperimentDetail, FinishReport
from pft.model_catalog import TEST_MODEL
from tests.utils.factories import claimed

BODY = {
    "model": TEST_MODEL,
    "dataset": "synthetic",
    "strategies": [{"name": "full"}, {"name": "attn_only"}, {"name": "linear_probe"}],
    "seeds": [0, 1],
    "hparams": {"epochs": 1},
}


def _run(settings: ApiSettings, job_id: int, acc: float | None, status: str = "succeeded") -> None:
    """Plays the worker's part for one job (what the worker routes call, no Celery)."""
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        claim = claimed(s, s.get(Job, job_id))
        epochs = []
        if acc is not None:
            epochs = [EpochRecord(epoch=1, metrics={"test_acc": acc, "heldout_acc": acc})]
        result = {"shifts": {"blur": acc}} if acc is not None else None
        report = FinishReport(claim=claim, status=status, result=result, epochs=epochs)
        assert claims.finish_job(s, job_id=job_id, claim=claim, report=report)


def test_one_job_per_strategy_and_seed(client: TestClient, settings: ApiSettings) -> None:
    r = client.post("/api/v1/experiments", json={**BODY, "name": "first"})
    assert r.status_code == 201, r.text
    body = r.json()
    jobs = body["jobs"]
    assert [(j["strategy"], j["seed"]) for j in jobs] == [
        (s, seed) for s in ("full", "attn_only", "linear_probe") for seed in (0, 1)
    ]
    assert all(j["config"]["hparams"]["seed"] == j["seed"] for j in jobs)
    assert all(j["experiment_id"] == body["experiment"]["id"] for j in jobs)
    assert body["experiment"]["status_counts"] == {"queued": 6}
    assert broker_job_ids(settings=settings) == {j["id"] for j in jobs}
    listed = client.get("/api/v1/jobs", params={"experiment_id": body["experiment"]["id"]})
    assert listed.json()["total"] == 6
    page = client.get("/api/v1/experiments").json()
    assert page["total"] == 1 and page["items"][0]["name"] == "first"


def test_invalid_strategy_writes_nothing(client: TestClient) -> None:
    body = {**BODY, "strategies": [{"name": "full"}, {"name": "ffn_only", "units": ["FFN.0"]}]}
    r = client.post("/api/v1/experiments", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "strategies", 1, "units"]
    assert client.get("/api/v1/jobs").json()["total"] == 0
    assert client.get("/api/v1/experiments").json()["total"] == 0


def test_list_caps(client: TestClient) -> None:
    too_many = {**BODY, "strategies": [{"name": "full"}] * 65}
    r = client.post("/api/v1/experiments", json=too_many)
    assert r.status_code == 422 and "at most 64" in r.json()["detail"][0]["msg"]
    r = client.post("/api/v1/experiments", json={**BODY, "seeds": list(range(33))})
    assert r.status_code == 422 and "at most 32" in r.json()["detail"][0]["msg"]
    r = client.post("/api/v1/experiments", json={**BODY, "seeds": [1, 1]})
    assert r.status_code == 422 and "distinct" in r.json()["detail"][0]["msg"]
    r = client.post("/api/v1/experiments", json={**BODY, "strategies": []})
    assert r.status_code == 422
    r = client.post("/api/v1/experiments", json={**BODY, "name": "a\x00b"})
    assert r.status_code == 422 and "printable" in r.json()["detail"][0]["msg"]


def test_summary_and_exports(client: TestClient, settings: ApiSettings) -> None:
    created = client.post("/api/v1/experiments", json=BODY).json()
    exp_id = created["experiment"]["id"]
    accs = {"full": (0.9, 0.8), "attn_only": (0.7, 0.6), "linear_probe": (0.5, None)}
    for job in created["jobs"]:
        acc = accs[job["strategy"]][job["seed"]]
        _run(settings, job["id"], acc, "succeeded" if acc is not None else "failed")
    detail = client.get(f"/api/v1/experiments/{exp_id}").json()
    ExperimentDetail.model_validate(detail)
    summary = {s["label"]: s for s in detail["summary"]}
    assert summary["full"]["test_acc_mean"] == statistics.fmean([0.9, 0.8])
    assert summary["full"]["test_acc_std"] == statistics.stdev([0.9, 0.8])
    assert summary["linear_probe"]["succeeded"] == 1 and summary["linear_probe"]["jobs"] == 2
    assert summary["linear_probe"]["test_acc_std"] == 0.0
    assert summary["full"]["tuned_fraction"] == 1.0
    assert summary["full"]["shift_acc_mean"] == {"blur": statistics.fmean([0.9, 0.8])}
    assert 0 < summary["attn_only"]["tuned_fraction"] < 1
    assert detail["status_counts"] == {"succeeded": 5, "failed": 1}

    r = client.get(f"/api/v1/experiments/{exp_id}/results.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 6 and rows[0]["strategy"] == "full" and rows[0]["test_acc"] == "0.9"
    data = client.get(f"/api/v1/experiments/{exp_id}/results.json").json()
    assert [row["job_id"] for row in data["jobs"]] == [j["id"] for j in created["jobs"]]
    assert data["jobs"][0]["shift_accuracies"] == {"blur": 0.9}
    assert client.get("/api/v1/experiments/999999/results.csv").status_code == 404


def test_summary_labels_show_what_was_asked_not_what_the_lab_filled(
    client: TestClient, settings: ApiSettings
) -> None:
    from tests.utils.factories import finished_finetune

    with make_sessionmaker(get_engine(settings.db_url))() as s:
        ref = finished_finetune(s)
    topk = {"name": "angle_topk", "k": 2, "reference_job": ref.id}
    body = {**BODY, "strategies": [topk], "seeds": [0]}
    created = client.post("/api/v1/experiments", json=body)
    assert created.status_code == 201, created.text
    detail = client.get(f"/api/v1/experiments/{created.json()['experiment']['id']}").json()
    [summary] = detail["summary"]
    assert summary["label"] == f"angle_topk(k=2, order=smallest, reference_job={ref.id})"
    assert summary["params"] == {"k": 2, "order": "smallest", "reference_job": ref.id}

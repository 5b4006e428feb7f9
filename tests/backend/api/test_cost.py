"""``GET /cost`` and ``GET /cost/jobs/{id}``: the cost preview from a calibrate job's result,
submitted through ``POST /jobs`` and finished through the worker routes, as a worker would."""

from __future__ import annotations

from fastapi.testclient import TestClient

from contract.api import Claim, CostComparison, CostPreview, FinishReport, JobPublic
from contract.vocab import API_PREFIX, WORKER_ROUTES, JobKind, JobStatus
from pft.cost.predict import CALIBRATION_VERSION, MEMORY_KEYS, TIME_KEYS, RunShape, predict
from pft.jobs.specs import CalibrateSpec
from pft.model_catalog import TEST_MODEL, unit_map_for
from pft.strategies import FULL_FINETUNING, resolve_strategy

W = f"{API_PREFIX}{WORKER_ROUTES}"
DATASET = "synthetic"
SIZES = {"name": DATASET, "num_classes": 4, "train": 400, "heldout": 40, "test": 160}
CAL = {
    "version": CALIBRATION_VERSION,
    "device_kind": "Test GPU 9000",
    "model": TEST_MODEL,
    "img_size": 16,
    "depth": 4,
    "prefix_cache_supported": True,
    "seconds": dict.fromkeys(TIME_KEYS, 1e-4) | {"optimizer_per_param": 1e-9},
    "memory": dict.fromkeys(MEMORY_KEYS, 1000.0) | {"scale": 1.0},
}


def _submit_calibrate(client: TestClient) -> JobPublic:
    r = client.post(
        f"{API_PREFIX}/jobs", json={"kind": "calibrate", "model": TEST_MODEL, "dataset": DATASET}
    )
    assert r.status_code == 201, r.text
    return JobPublic.model_validate(r.json())


def _finish(worker_client: TestClient, job_id: int, result: dict) -> None:
    r = worker_client.post(f"{W}/jobs/{job_id}/claim", json={"worker": "gpu-1"})
    assert r.status_code == 200, r.text
    claim = Claim.model_validate(r.json())
    report = FinishReport(claim=claim.claim, status=JobStatus.SUCCEEDED, result=result)
    r = worker_client.post(f"{W}/jobs/{job_id}/finish", json=report.model_dump(mode="json"))
    assert r.status_code == 204, r.text


def _cost(client: TestClient, **params) -> CostPreview:
    query = {"model": TEST_MODEL, "dataset": DATASET, "epochs": 2} | params
    r = client.get(f"{API_PREFIX}/cost", params=query)
    assert r.status_code == 200, r.text
    return CostPreview.model_validate(r.json())


def test_a_calibrate_job_is_queued_with_its_spec(client: TestClient):
    job = _submit_calibrate(client)
    assert (job.kind, job.status, job.model, job.dataset) == (
        JobKind.CALIBRATE,
        JobStatus.QUEUED,
        TEST_MODEL,
        DATASET,
    )
    assert job.config == CalibrateSpec(model=TEST_MODEL, dataset=DATASET).to_dict()


def test_without_a_calibration_the_answer_says_how_to_get_one(client: TestClient):
    preview = _cost(client)
    assert not preview.calibrated and preview.strategies == []
    assert '"kind": "calibrate"' in preview.message and "pft strategies" in preview.message
    job = _submit_calibrate(client)
    preview = _cost(client)
    assert not preview.calibrated and preview.pending_job == job.id
    assert f"calibrate job {job.id} is queued" in preview.message


def test_a_finished_calibration_predicts_every_strategy(
    client: TestClient, worker_client: TestClient
):
    job = _submit_calibrate(client)
    _finish(worker_client, job.id, {"calibration": CAL, "dataset": SIZES})
    preview = _cost(client, batch_size=50, augment=False)
    assert preview.calibrated and preview.calibration_job == job.id
    assert preview.device_kind == "Test GPU 9000" and preview.pending_job is None
    assert (preview.train_images, preview.eval_images) == (400, 200)
    by_name = {p.strategy: p for p in preview.strategies}
    assert FULL_FINETUNING in by_name and "linear_probe" in by_name
    um = unit_map_for(TEST_MODEL, 4)
    run = RunShape(400, 200, epochs=2, batch_size=50, augment=False, prefix_cache=True)
    full = resolve_strategy(um, FULL_FINETUNING)
    expected = predict(CAL, um, FULL_FINETUNING, full.tensors, run)
    assert by_name[FULL_FINETUNING].seconds == expected.seconds
    assert by_name[FULL_FINETUNING].peak_mb == expected.peak_mb
    assert by_name["linear_probe"].prefix_cached and not by_name[FULL_FINETUNING].prefix_cached
    probe = resolve_strategy(um, "linear_probe")
    assert (
        by_name["linear_probe"].seconds
        == predict(CAL, um, "linear_probe", probe.tensors, run).seconds
    )
    # augmentation on: nothing is cached
    assert not any(p.prefix_cached for p in _cost(client, augment=True).strategies)


def test_bad_parameters_are_422_naming_the_field(client: TestClient):
    for params, field in (
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"model": "no_such_model_xyz"}, "model"),
        ({"dataset": "no_such_dataset"}, "dataset"),
    ):
        query = {"model": TEST_MODEL, "dataset": DATASET, "epochs": 2} | params
        r = client.get(f"{API_PREFIX}/cost", params=query)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", field], r.text
    r = client.get(f"{API_PREFIX}/cost", params={"model": TEST_MODEL, "epochs": 2})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "dataset"]


def test_a_finished_job_shows_predicted_against_measured(
    client: TestClient, worker_client: TestClient
):
    cal = _submit_calibrate(client)
    _finish(worker_client, cal.id, {"calibration": CAL, "dataset": SIZES})
    body = {"model": TEST_MODEL, "dataset": DATASET, "strategy": {"name": "attn_last_half"}}
    body["hparams"] = {"epochs": 3, "batch_size": 32, "augment": False}
    r = client.post(f"{API_PREFIX}/jobs", json=body)
    assert r.status_code == 201, r.text
    job = JobPublic.model_validate(r.json())
    result = {"train_seconds": 2.5, "prefix_cache": {"used": True, "seconds": 0.5}}
    _finish(worker_client, job.id, result)
    r = client.get(f"{API_PREFIX}/cost/jobs/{job.id}")
    assert r.status_code == 200, r.text
    got = CostComparison.model_validate(r.json())
    assert got.measured_seconds == 3.0 and got.strategy == "attn_last_half"
    um = unit_map_for(TEST_MODEL, 4)
    sel = resolve_strategy(um, "attn_last_half")
    run = RunShape(400, 200, epochs=3, batch_size=32, augment=False, prefix_cache=True)
    expected = predict(CAL, um, "attn_last_half", sel.tensors, run)
    assert got.predicted is not None and got.predicted.prefix_cached
    assert got.predicted.train_seconds == expected.train_seconds
    assert got.predicted.prefix_seconds == expected.prefix_seconds
    # a calibrate job itself has no prediction
    other = CostComparison.model_validate(client.get(f"{API_PREFIX}/cost/jobs/{cal.id}").json())
    assert other.predicted is None and "calibrate job" in other.message
    assert client.get(f"{API_PREFIX}/cost/jobs/999999").status_code == 404


def _finetune(client: TestClient, batch_size: int = 64, **extra) -> object:
    body = {"model": TEST_MODEL, "dataset": DATASET, "strategy": {"name": FULL_FINETUNING}}
    body["hparams"] = {"epochs": 1, "batch_size": batch_size}
    return client.post(f"{API_PREFIX}/jobs", json=body | extra)


def test_a_job_that_cannot_fit_is_refused_naming_the_field(client: TestClient):
    # vit-micro at 4096x4096 with 1-pixel patches: 16.8M tokens; nothing fits, at any batch
    r = _finetune(client, batch_size=1, model_overrides={"img_size": 4096, "patch_size": 1})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "model_overrides"]
    assert "estimated peak training memory" in err["msg"] and "even at batch 1" in err["msg"]
    r = _finetune(client, batch_size=4096, model_overrides={"depth": 4096, "img_size": 1024})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model_overrides"]
    assert _finetune(client).status_code == 201  # the test model as it is fits


def test_the_limit_comes_from_the_setting_or_the_calibrations(
    client: TestClient, worker_client: TestClient, settings
):
    from backend.main import create_app

    with TestClient(create_app(settings.model_copy(update={"job_memory_mb": 5.0}))) as small:
        small.headers.update(client.headers)
        r = _finetune(small, batch_size=64)
        assert r.status_code == 422, r.text
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "hparams", "batch_size"]
        assert "exceeds 5 MB (PFT_JOB_MEMORY_MB)" in err["msg"]
        largest = int(err["msg"].rsplit("about ", 1)[1])
        assert 1 <= largest < 64
        assert _finetune(small, batch_size=largest).status_code == 201
        assert _finetune(small, batch_size=largest + 1).status_code == 422
        body = {"model": TEST_MODEL, "dataset": DATASET, "strategies": [{"name": "full"}]}
        r = small.post(f"{API_PREFIX}/experiments", json=body | {"hparams": {"batch_size": 64}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "batch_size"
    # no setting: the largest device memory a calibrate job reported
    job = _submit_calibrate(client)
    _finish(
        worker_client, job.id, {"calibration": CAL | {"device_memory_mb": 5.0}, "dataset": SIZES}
    )
    r = _finetune(client, batch_size=64)
    assert r.status_code == 422 and "calibrate job reported" in r.json()["detail"][0]["msg"]

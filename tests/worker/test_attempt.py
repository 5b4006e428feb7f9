"""`worker.attempt.run_job` in this process (no Celery) against a real API process: soups,
angle_topk, pre-training, skipped claims and a worker whose device is missing.

The Celery side is covered by test_worker_processes.py; here the job function talks to the API
over HTTP with the worker token, exactly as a pool process does, and trains for real (tiny).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
from pydantic import SecretStr

from contract.vocab import JobKind, JobStatus
from pft.store import sha256_file
from tests.worker.conftest import Lab, make_lab
from worker.attempt import run_job
from worker.config import WorkerSettings

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Iterator[Lab]:
    with make_lab(tmp_path_factory.mktemp("jobs"), broker_url) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def settings(lab: Lab) -> Iterator[WorkerSettings]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PFT_DATA_DIR", str(lab.data))  # pft.paths: where pretrain installs the backbone
        yield WorkerSettings(
            data_dir=lab.data,
            api_url=lab.api.url,
            worker_token=lab.api.worker_token,
            device="cpu",
            heartbeat_interval_s=0.2,
            heartbeat_stale_s=3,
            torch_threads=1,
            report_retry_s=10,
        )


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """run_job sets torch's thread count for this process; put it back for other modules."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(lab: Lab, settings: WorkerSettings, job_id: int, expected: str = "succeeded") -> None:
    outcome = run_job(job_id, settings=settings)
    assert outcome == expected, lab.job(job_id).error


@pytest.fixture(scope="module")
def two_runs(lab: Lab, settings: WorkerSettings) -> list[int]:
    """Two succeeded fine-tuning jobs of one base model: a full run and an ATTN-only run."""
    ids = [
        lab.create_job(hparams={"epochs": 2, "lr": 2e-3}),
        lab.create_job(strategy={"name": "attn_only"}),
    ]
    for job_id in ids:
        _run(lab, settings, job_id)
    return ids


@pytest.mark.slow
def test_a_finetune_reports_epochs_final_angle_rows_and_artifacts(lab, settings, two_runs):
    job = lab.job(two_runs[0])
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and job.progress == 1.0
    assert job.worker.endswith("(cpu)") and job.progress_info["device"] == "cpu"
    assert job.result["resumed_from_epoch"] == 0
    assert lab.epochs(job.id) == [1, 2]
    angles = lab.angles(job.id)
    assert [e.epoch for e in angles.epochs] == [1, 2]
    units = {r.name: r for r in angles.final.units}
    assert set(units) == {f"{g}.{i}" for g in ("ATTN", "FFN") for i in range(4)}
    # full rows: the relative change, the unit's group and block, the tensor's part
    assert all(r.rel_change is not None and r.group and r.block is not None for r in units.values())
    assert angles.final.tensors and all(r.unit and r.part for r in angles.final.tensors[:5])
    artifacts = lab.artifacts(job.id)
    assert set(artifacts) == {"delta", "metrics", "angles"}
    for a in artifacts.values():
        assert sha256_file(lab.file(a)) == a.sha256 and a.size_bytes > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uniform", "greedy", "masked"])
def test_soup_jobs_store_trace_and_scores(lab, settings, two_runs, method):
    body = {"ingredients": two_runs, "method": method, "shifts": ["blur", "gaussian_noise:2"]}
    job_id = lab.submit(body, path="/soups")
    _run(lab, settings, job_id)
    job = lab.job(job_id)
    soup = lab.get(f"/soups/{job_id}")
    assert 0 <= soup["score_in"] <= 1 and soup["score_in"] == job.result["test_acc"]
    assert set(soup["scores_out"]) == {"blur", "gaussian_noise:2"}
    assert "soup" in lab.artifacts(job_id)
    if method == "greedy":
        # Wortsman et al.: best ingredient first, each next kept only if held-out acc rises.
        trace = soup["trace"]
        assert trace and trace[0]["accepted"] is True
        assert {t["job_id"] for t in trace} == set(two_runs)
        best = max(two_runs, key=lambda i: lab.job(i).result["heldout_acc"])
        assert trace[0]["job_id"] == best
        assert job.result["selected"] == [t["job_id"] for t in trace if t["accepted"]]
    else:
        assert soup["trace"] == [] and job.result["selected"] == two_runs


@pytest.mark.slow
def test_soup_with_a_tampered_ingredient_fails_with_a_clear_message(lab, settings, two_runs):
    delta = lab.file(lab.artifacts(two_runs[1])["delta"])
    original = delta.read_bytes()
    try:
        with open(delta, "r+b") as f:  # flip bytes inside the tensor data
            f.seek(-16, 2)
            f.write(b"\xff" * 8)
        job_id = lab.submit({"ingredients": two_runs, "method": "uniform"}, path="/soups")
        _run(lab, settings, job_id, "failed")
        error = lab.job(job_id).error
    finally:
        delta.write_bytes(original)  # the module's other tests share the runs
    assert error.startswith(f"corrupt checkpoint of job {two_runs[1]}") and "sha256" in error


@pytest.mark.slow
def test_angle_topk_trains_the_units_the_reference_jobs_final_angles_pick(lab, settings, two_runs):
    reference = two_runs[0]
    angles = {r.name: r.angle_deg for r in lab.angles(reference).final.units}
    strategy = {"name": "angle_topk", "k": 1, "order": "largest", "reference_job": reference}
    job_id = lab.create_job(strategy=strategy)
    _run(lab, settings, job_id)
    units = lab.job(job_id).result["strategy"]["units"]
    expected = [
        max((u for u in angles if u.startswith(f"{g}.")), key=angles.get) for g in ("ATTN", "FFN")
    ]
    assert sorted(units) == sorted(expected)


@pytest.mark.slow
def test_pretrain_job_installs_the_builtin_backbone(lab, settings):
    from pft.model_catalog import BUILTIN_BACKBONE
    from pft.model_factory import builtin_weights_path

    # a subset keeps it short: only jobs inserted behind the API can ask for one
    job_id = lab.insert_job(JobKind.PRETRAIN, {"epochs": 1, "subset": 64})
    _run(lab, settings, job_id)
    installed = builtin_weights_path(BUILTIN_BACKBONE)
    assert installed.is_file() and (installed.parent / "model.json").is_file()
    assert lab.epochs(job_id) == [1]
    assert lab.artifacts(job_id)["backbone"].size_bytes == installed.stat().st_size
    assert json.loads((installed.parent / "model.json").read_text())["model"] == BUILTIN_BACKBONE


def test_a_finished_unknown_or_cancelled_job_is_skipped(lab, settings):
    assert run_job(12345, settings=settings) == "skipped"
    job_id = lab.create_job(hparams={"epochs": 1})
    assert lab.post(f"/jobs/{job_id}/cancel").status == JobStatus.CANCELLED
    assert run_job(job_id, settings=settings) == "skipped"
    assert lab.job(job_id).attempts == 0


def test_a_job_running_elsewhere_with_a_fresh_heartbeat_is_not_taken(lab, settings):
    job_id = lab.create_job(hparams={"epochs": 1})
    with lab.api.client(lab.api.worker_token) as c:
        r = c.post(f"/worker/jobs/{job_id}/claim", json={"worker": "other-host:1 (cuda:0)"})
        assert r.status_code == 200, r.text
    assert run_job(job_id, settings=settings) == "skipped"
    job = lab.job(job_id)
    assert job.worker == "other-host:1 (cuda:0)" and job.attempts == 1


def test_a_worker_without_the_worker_token_is_refused(lab, settings, caplog):
    job_id = lab.create_job(hparams={"epochs": 1})
    for token in (lab.api.token, "not-a-token"):  # the users' token is no worker credential
        wrong = settings.model_copy(update={"worker_token": SecretStr(token)})
        caplog.clear()
        with caplog.at_level("ERROR", logger="worker.attempt"):
            assert run_job(job_id, settings=wrong) == "refused"
        assert "HTTP 401: set PFT_WORKER_TOKEN" in caplog.text
    assert lab.job(job_id).status == JobStatus.QUEUED and lab.job(job_id).attempts == 0


def test_torch_threads_follow_the_setting(lab, settings, caplog):
    job_id = lab.create_job(hparams={"epochs": 1, "batch_size": 64})
    with caplog.at_level("INFO", logger="worker.attempt"):
        _run(lab, settings.model_copy(update={"torch_threads": 2}), job_id)
    assert torch.get_num_threads() == 2
    assert "2 torch threads" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")
def test_a_cuda_worker_without_cuda_fails_the_job_with_the_reason(lab, settings):
    job_id = lab.create_job(hparams={"epochs": 1})
    _run(lab, settings.model_copy(update={"device": "cuda"}), job_id, "failed")
    error = lab.job(job_id).error
    assert error.startswith("PFT_DEVICE=cuda but CUDA is not available") and "retry" in error
    assert lab.job(job_id).worker.endswith("(cuda)")

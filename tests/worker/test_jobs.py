"""`worker.jobs.run_job` in this process (no Celery): soups, angle_topk, pre-training, errors.

The Celery side is covered by test_worker_processes.py; here the job functions run directly
against a real SQLite database and real (tiny) training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from backend import crud
from backend.db.session import migrate, session_scope
from tests.worker.conftest import tiny_config
from worker.config import WorkerSettings
from worker.jobs import JobContext, check_safetensors, describe_error, run_job

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerSettings]:
    data = tmp_path_factory.mktemp("jobs") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PFT_DATA_DIR", str(data))  # pft.paths: where pretrain installs the backbone
        settings = WorkerSettings(
            data_dir=data, device="cpu", heartbeat_interval_s=0.2, heartbeat_stale_s=3
        )
        migrate(settings.db_url)
        yield settings


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Two cores shared with other test processes: more threads only oversubscribe them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _create(settings: WorkerSettings, kind: str, config: dict) -> int:
    with session_scope(settings.db_url) as s:
        job = crud.create_job(s, kind=kind, config=config)
        if kind == "soup":
            crud.create_soup(
                s,
                job_id=job.id,
                method=config["method"],
                ingredients=config["ingredients"],
                shifts=config.get("shifts", []),
            )
        return job.id


def _job(settings: WorkerSettings, job_id: int):
    with session_scope(settings.db_url) as s:
        job = crud.get_job(s, job_id=job_id)
        s.expunge(job)
        return job


@pytest.fixture(scope="module")
def two_runs(settings: WorkerSettings) -> list[int]:
    """Two succeeded fine-tuning jobs of one base model: a full run and an ATTN-only run."""
    ids = [
        _create(settings, "finetune", tiny_config(hparams={"epochs": 2, "lr": 2e-3})),
        _create(settings, "finetune", tiny_config(strategy={"name": "attn_only"})),
    ]
    for job_id in ids:
        assert run_job(job_id, settings=settings) == "succeeded", _job(settings, job_id).error
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uniform", "greedy", "masked"])
def test_soup_jobs_store_trace_and_scores(settings, two_runs, method):
    config = {"ingredients": two_runs, "method": method, "shifts": ["blur", "gaussian_noise:2"]}
    job_id = _create(settings, "soup", config)
    assert run_job(job_id, settings=settings) == "succeeded", _job(settings, job_id).error
    job = _job(settings, job_id)
    with session_scope(settings.db_url) as s:
        soup = crud.get_job(s, job_id=job_id).soup
        s.expunge(soup)
        artifacts = {a.kind: a for a in crud.get_artifacts(s, job_id=job_id)}
    assert 0 <= soup.score_in <= 1 and soup.score_in == job.result["test_acc"]
    assert set(soup.scores_out) == {"blur", "gaussian_noise:2"}
    assert "soup" in artifacts
    if method == "greedy":
        # Wortsman et al.: best ingredient first, each next kept only if held-out acc rises.
        assert [t["job_id"] for t in soup.trace] and soup.trace[0]["accepted"] is True
        assert {t["job_id"] for t in soup.trace} == set(two_runs)
        best = max(two_runs, key=lambda i: _job(settings, i).result["heldout_acc"])
        assert soup.trace[0]["job_id"] == best
        kept = [t["job_id"] for t in soup.trace if t["accepted"]]
        assert job.result["selected"] == kept
    else:
        assert soup.trace == [] and job.result["selected"] == two_runs


@pytest.mark.slow
def test_soup_with_a_tampered_ingredient_fails_with_a_clear_message(settings, two_runs):
    with session_scope(settings.db_url) as s:
        delta = next(a for a in crud.get_artifacts(s, job_id=two_runs[1]) if a.kind == "delta")
    original = Path(delta.location).read_bytes()
    try:
        with open(delta.location, "r+b") as f:  # flip bytes inside the tensor data
            f.seek(-16, 2)
            f.write(b"\xff" * 8)
        job_id = _create(settings, "soup", {"ingredients": two_runs, "method": "uniform"})
        assert run_job(job_id, settings=settings) == "failed"
        error = _job(settings, job_id).error
    finally:
        Path(delta.location).write_bytes(original)  # the module's other tests share the runs
    assert error.startswith(f"corrupt checkpoint of job {two_runs[1]}") and "sha256" in error


@pytest.mark.slow
def test_angle_topk_reads_the_reference_jobs_final_angles(settings, two_runs):
    reference = two_runs[0]
    with session_scope(settings.db_url) as s:
        angles = crud.final_unit_angles(s, job_id=reference)
    strategy = {"name": "angle_topk", "k": 1, "order": "largest", "reference_job": reference}
    job_id = _create(settings, "finetune", tiny_config(strategy=strategy))
    assert run_job(job_id, settings=settings) == "succeeded", _job(settings, job_id).error
    units = _job(settings, job_id).result["strategy"]["units"]
    expected = [
        max((u for u in angles if u.startswith(f"{g}.")), key=angles.get) for g in ("ATTN", "FFN")
    ]
    assert sorted(units) == sorted(expected)

    no_angles = _create(
        settings, "finetune", tiny_config(strategy={**strategy, "reference_job": 999})
    )
    assert run_job(no_angles, settings=settings) == "failed"
    assert "reference_job 999 has no final angles" in _job(settings, no_angles).error


@pytest.mark.slow
def test_pretrain_job_installs_the_builtin_backbone(settings):
    from pft.model_catalog import BUILTIN_BACKBONE
    from pft.model_factory import builtin_weights_path

    job_id = _create(settings, "pretrain", {"model": BUILTIN_BACKBONE, "epochs": 1, "subset": 64})
    assert run_job(job_id, settings=settings) == "succeeded", _job(settings, job_id).error
    installed = builtin_weights_path(BUILTIN_BACKBONE)
    assert installed.is_file() and (installed.parent / "model.json").is_file()
    with session_scope(settings.db_url) as s:
        artifacts = {a.kind: a for a in crud.get_artifacts(s, job_id=job_id)}
        assert [m.epoch for m in crud.get_metrics(s, job_id=job_id)] == [1]
    assert artifacts["backbone"].size_bytes == installed.stat().st_size
    assert json.loads((installed.parent / "model.json").read_text())["model"] == BUILTIN_BACKBONE


def test_a_finished_or_unknown_job_is_skipped(settings):
    assert run_job(12345, settings=settings) == "skipped"
    job_id = _create(settings, "finetune", tiny_config(hparams={"epochs": 1}))
    with session_scope(settings.db_url) as s:
        assert crud.request_cancel(s, job_id=job_id) == "cancelled"
    assert run_job(job_id, settings=settings) == "skipped"
    assert _job(settings, job_id).attempts == 0


def test_a_job_running_elsewhere_with_a_fresh_heartbeat_is_not_taken(settings):
    job_id = _create(settings, "finetune", tiny_config(hparams={"epochs": 1}))
    with session_scope(settings.db_url) as s:
        assert crud.claim_job(s, job_id=job_id, worker="other-host:1 (cuda:0)") is not None
    assert run_job(job_id, settings=settings) == "skipped"
    job = _job(settings, job_id)
    assert job.worker == "other-host:1 (cuda:0)" and job.attempts == 1


def _ctx(batch_size: int = 64) -> JobContext:
    return JobContext(
        1,
        {"hparams": {"batch_size": batch_size}},
        1,
        "cuda:0",
        "w",
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
    )


def test_out_of_memory_gets_an_actionable_message():
    # No GPU here: the exception is the one torch raises when CUDA allocation fails.
    exc = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    text = describe_error(exc, _ctx(256))
    assert text.startswith("out of memory on cuda:0: lower hparams.batch_size (now 256)")
    assert "Tried to allocate 2.00 GiB" in text
    cpu = describe_error(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"), _ctx()
    )
    assert cpu.startswith("out of memory")
    other = describe_error(KeyError("boom"), _ctx())
    assert other.startswith("internal error (KeyError)") and "\n" not in other


def test_check_safetensors_catches_truncated_and_garbage_files(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(good))
    check_safetensors(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        check_safetensors(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"PK\x03\x04 this is a zip file, not tensors")
    with pytest.raises(ValueError):
        check_safetensors(garbage)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")
def test_a_cuda_worker_without_cuda_fails_the_job_with_the_reason(settings):
    job_id = _create(settings, "finetune", tiny_config(hparams={"epochs": 1}))
    cuda_settings = settings.model_copy(update={"device": "cuda"})
    assert run_job(job_id, settings=cuda_settings) == "failed"
    error = _job(settings, job_id).error
    assert error.startswith("PFT_DEVICE=cuda but CUDA is not available") and "retry" in error

"""The worker's settings, Celery configuration and command line (no processes started)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from worker.config import WorkerSettings
from worker.runner import worker_argv


def test_celery_app_is_configured_for_long_jobs_with_early_ack_and_no_prefetch():
    from worker.celery_app import TASK_NAME, app

    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.result_serializer == "json" and conf.task_ignore_result
    # Early ack + heartbeat reaper (see worker/celery_app.py): a killed worker's job is not
    # hostage to a visibility timeout; no hoarding of the next message while a job runs.
    assert conf.task_acks_late is False
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_disable_prefetch is True
    assert conf.worker_concurrency == 1 and conf.worker_max_tasks_per_child == 1
    assert conf.broker_transport_options["visibility_timeout"] <= 120
    import worker.tasks  # noqa: F401  (registers the task)

    task = app.tasks[TASK_NAME]
    assert task.acks_late is False and task.ignore_result


@pytest.mark.slow
def test_importing_the_worker_does_not_touch_cuda():
    # The parent imports torch before forking its pool, but must never initialise CUDA there.
    code = (
        "import worker.tasks, worker.jobs, torch; "
        "assert not torch.cuda.is_initialized(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_worker_argv_is_a_prefork_worker_on_the_configured_queue(monkeypatch):
    argv = worker_argv(2, queue="pft-x", hostname="a@b")
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
    joined = " ".join(argv)
    for part in (
        "--pool prefork",
        "--concurrency 2",
        "--prefetch-multiplier 1",
        "--queues pft-x",
        "--hostname a@b",
    ):
        assert part in joined
    with pytest.raises(ValueError, match="at least 1"):
        worker_argv(0)


def test_settings_validate_device_and_heartbeat(monkeypatch, tmp_path):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PFT_DEVICE", "cuda:1")
    settings = WorkerSettings()
    assert settings.device == "cuda:1"
    assert settings.resolved_artifact_url == str(tmp_path.resolve() / "artifacts")
    assert settings.heartbeat_stale_s <= 60  # the default staleness threshold
    monkeypatch.setenv("PFT_DEVICE", "gpu0")
    with pytest.raises(ValidationError, match="PFT_DEVICE='gpu0'.*accepted: cpu, cuda"):
        WorkerSettings()
    monkeypatch.setenv("PFT_DEVICE", "")
    assert WorkerSettings().device is None
    monkeypatch.setenv("PFT_HEARTBEAT_INTERVAL_S", "30")
    with pytest.raises(ValidationError, match="PFT_HEARTBEAT_INTERVAL_S"):
        WorkerSettings()

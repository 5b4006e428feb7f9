"""The worker's settings, Celery configuration and command line (no processes started)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from contract.vocab import TASK_NAME
from lab.worker_command import worker_argv
from worker.config import WorkerSettings


def test_celery_app_is_configured_for_long_jobs_with_early_ack_and_no_prefetch():
    from worker.celery_app import app

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
def test_importing_the_worker_touches_neither_cuda_nor_the_database_layer():
    # The parent imports torch before forking its pool, but must never initialise CUDA there;
    # and a worker host needs no database driver at all.
    code = (
        "import sys, worker.tasks, worker.attempt, torch; "
        "assert not torch.cuda.is_initialized(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('backend', 'sqlalchemy', 'fastapi', 'alembic')); "
        "assert not bad, bad; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_worker_argv_is_a_prefork_worker_on_the_configured_queue():
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
    assert not hasattr(settings, "database_url") and not hasattr(settings, "db_url")
    monkeypatch.setenv("PFT_DEVICE", "gpu0")
    with pytest.raises(ValidationError, match="PFT_DEVICE='gpu0'.*accepted: cpu, cuda"):
        WorkerSettings()
    monkeypatch.setenv("PFT_DEVICE", "")
    assert WorkerSettings().device is None
    monkeypatch.setenv("PFT_HEARTBEAT_INTERVAL_S", "30")
    with pytest.raises(ValidationError, match="PFT_HEARTBEAT_INTERVAL_S"):
        WorkerSettings()


def test_the_worker_token_comes_from_the_variable_else_the_data_folder(monkeypatch, tmp_path):
    from worker.api_client import WorkerApi

    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PFT_WORKER_TOKEN", raising=False)
    (tmp_path / "worker_token").write_text("from-the-file\n")
    with WorkerApi(WorkerSettings(api_url="http://api.example:9000")) as client:
        assert client.headers["Authorization"] == "Bearer from-the-file"
        assert str(client.base_url) == "http://api.example:9000/api/v1/worker/"
    monkeypatch.setenv("PFT_WORKER_TOKEN", "from-the-variable")
    settings = WorkerSettings()
    assert "from-the-variable" not in repr(settings)  # a secret, never printed
    with WorkerApi(settings) as client:
        assert client.headers["Authorization"] == "Bearer from-the-variable"

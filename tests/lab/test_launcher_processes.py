"""The launcher's process handling on real processes (``lab.processes``: groups, pid files),
the lab lock of ``lab.launcher`` and its settings (``lab.config``).

These run in seconds and need none of the lab's services; ``test_launcher.py`` starts the
whole lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.config import LauncherSettings, SettingsError, load_settings
from lab.launcher import Lab, LaunchError
from lab.processes import (
    group_alive,
    pid_file_is_live,
    read_pid_file,
    stop_group,
    write_pid_file,
)


def _spawn(script: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    time.sleep(0.3)  # let the shell start its children
    return proc


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def test_stop_group_stops_children_that_ignore_sigterm() -> None:
    # The shell and both sleeps ignore SIGTERM: only SIGKILL after the grace period ends them.
    proc = _spawn("trap '' TERM; sleep 60 & sleep 60 & wait")
    assert group_alive(proc.pid)
    started = time.monotonic()
    stop_group(proc.pid, proc.pid, grace_s=0.5)
    _reap(proc)
    assert not group_alive(proc.pid)
    assert time.monotonic() - started >= 0.5


def test_stop_group_is_quick_for_polite_processes() -> None:
    proc = _spawn("sleep 60 & sleep 60 & wait")
    started = time.monotonic()
    stop_group(proc.pid, proc.pid, grace_s=10)
    _reap(proc)
    assert not group_alive(proc.pid)
    assert time.monotonic() - started < 5


def test_pid_files_recognise_the_same_process_only(tmp_path: Path) -> None:
    proc = _spawn("sleep 60")
    try:
        path = tmp_path / "api.pid"
        write_pid_file(path, proc.pid, argv=["sleep"])
        record = read_pid_file(path)
        assert record and record["pid"] == proc.pid and record["pgid"] == proc.pid
        assert pid_file_is_live(record)
        # A recycled pid: same number, another start time.
        assert not pid_file_is_live({**record, "start_time": "1"})
    finally:
        stop_group(proc.pid, proc.pid, 2)
        _reap(proc)
    assert not pid_file_is_live(record)


def test_pid_file_never_names_a_group_it_does_not_lead(tmp_path: Path) -> None:
    path = tmp_path / "self.pid"
    write_pid_file(path, os.getpid())
    record = read_pid_file(path)
    assert record is not None
    assert record["pgid"] in (None, os.getpid())
    if os.getpgid(0) != os.getpid():
        assert record["pgid"] is None


def test_bare_pid_files_are_checked_against_the_command_line(tmp_path: Path) -> None:
    proc = _spawn("sleep 60")
    try:
        (tmp_path / "redis.pid").write_text(f"{proc.pid}\n")
        assert not pid_file_is_live(read_pid_file(tmp_path / "redis.pid"))  # not redis
        (tmp_path / "sleep.pid").write_text(f"{proc.pid}\n")
        assert pid_file_is_live(read_pid_file(tmp_path / "sleep.pid"))
    finally:
        stop_group(proc.pid, proc.pid, 2)
        _reap(proc)


def test_a_second_launcher_sees_the_lock_until_the_first_stops(tmp_path: Path) -> None:
    cfg = LauncherSettings(data_dir=tmp_path)
    first, second = Lab(cfg), Lab(cfg)
    assert first.acquire()
    assert not second.acquire()
    first.stop()
    assert second.acquire()
    second.stop()


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from lab.launcher import Lab;"
        "from lab.config import LauncherSettings;"
        f"lab = Lab(LauncherSettings(data_dir=Path({str(tmp_path)!r})));"
        "assert lab.acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not Lab(LauncherSettings(data_dir=tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=5)
    lab = Lab(LauncherSettings(data_dir=tmp_path))
    assert lab.acquire()
    lab.stop()


def test_stale_pid_files_are_taken_over(tmp_path: Path) -> None:
    cfg = LauncherSettings(data_dir=tmp_path, stop_grace_s=2)
    lab = Lab(cfg, out=open(os.devnull, "w"))  # noqa: SIM115
    assert lab.acquire()
    orphan = _spawn("sleep 60 & sleep 60 & wait")  # what a SIGKILLed launcher leaves behind
    bystander = _spawn("sleep 60")  # a recycled pid: must be left alone
    try:
        write_pid_file(cfg.layout.run / "worker.pid", orphan.pid)
        write_pid_file(cfg.layout.run / "api.pid", bystander.pid)
        record = read_pid_file(cfg.layout.run / "api.pid")
        (cfg.layout.run / "api.pid").write_text(json.dumps({**record, "start_time": "1"}))
        lab._take_over_stale()
        _reap(orphan)
        assert not group_alive(orphan.pid)
        assert bystander.poll() is None, "a process with a recycled pid was stopped"
        assert not list(cfg.layout.run.glob("*.pid"))
    finally:
        stop_group(bystander.pid, bystander.pid, 2)
        _reap(bystander)
        stop_group(orphan.pid, orphan.pid, 2)
        lab.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No inherited PFT_* variable: the test sets the ones it is about."""
    for name in [k for k in os.environ if k.startswith("PFT_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_settings_come_from_the_environment(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PFT_DATA_DIR", str(tmp_path))
    clean_env.setenv("PFT_API_PORT", "9001")
    clean_env.setenv("PFT_AUTO_PRETRAIN", "0")
    clean_env.setenv("PFT_REDIS_PORT", "")  # empty: the default (a free port)
    cfg = load_settings()
    assert cfg.api_port == 9001 and cfg.dashboard_port == 8501 and cfg.redis_port is None
    assert not cfg.auto_pretrain
    assert cfg.lab_api_url == "http://127.0.0.1:9001"
    assert cfg.dashboard_url == "http://127.0.0.1:8501"
    assert cfg.layout.api_token == tmp_path.resolve() / "api_token"
    clean_env.setenv("PFT_LAB_HOST", "0.0.0.0")
    assert load_settings().dashboard_url == "http://127.0.0.1:8501"  # reached via loopback


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("PFT_API_PORT", "http", "valid integer"),
        ("PFT_DASHBOARD_PORT", "70000", "less than or equal to 65535"),
        ("PFT_REDIS_PORT", "0", "greater than or equal to 1"),
        ("PFT_STOP_GRACE_S", "-1", "greater than or equal to 0"),
        ("PFT_START_TIMEOUT_S", "inf", "finite"),
        ("PFT_AUTO_PRETRAIN", "maybe", "valid boolean"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(
    clean_env: pytest.MonkeyPatch, var: str, value: str, says: str
) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(SettingsError, match=f"{var}={value!r}: .*{says}"):
        load_settings()


def test_pft_up_refuses_a_bad_variable_before_starting_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFT_")}
    env.update(PFT_DATA_DIR=str(tmp_path / "data"), PFT_DASHBOARD_PORT="http")
    code = "from lab.launcher import up; up()"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PFT_DASHBOARD_PORT='http'" in result.stderr
    assert not (tmp_path / "data").exists()


def test_the_worker_gets_the_api_and_its_token_but_no_database(tmp_path: Path) -> None:
    from lab.launcher import _dashboard_env, _worker_env

    env = {
        "PFT_DATA_DIR": str(tmp_path),
        "PFT_API_URL": "http://127.0.0.1:9",
        "PFT_DATABASE_URL": "sqlite:///x.db",
        "PFT_API_TOKEN": "users",
    }
    worker = _worker_env(env, "w-token")
    assert worker["PFT_WORKER_TOKEN"] == "w-token"
    assert worker["PFT_API_URL"] == "http://127.0.0.1:9"
    assert "PFT_DATABASE_URL" not in worker and "PFT_API_TOKEN" not in worker
    dashboard = _dashboard_env({**env, "PFT_WORKER_TOKEN": "w-token"})
    assert "PFT_WORKER_TOKEN" not in dashboard and "PFT_DATABASE_URL" not in dashboard


def test_a_busy_port_is_refused_with_the_variable_to_change(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        lab = Lab(LauncherSettings(data_dir=tmp_path, api_port=port))
        with pytest.raises(LaunchError, match=f"port {port} \\(PFT_API_PORT\\)"):
            lab._check_ports()

"""The launcher's process handling on real processes (``lab.processes``: groups, pid files),
and the lab lock and config of ``lab.launcher``.

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

from lab.launcher import Lab, LabConfig, LaunchError
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
    cfg = LabConfig(data_dir=tmp_path)
    first, second = Lab(cfg), Lab(cfg)
    assert first.acquire()
    assert not second.acquire()
    first.stop()
    assert second.acquire()
    second.stop()


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from lab.launcher import Lab, LabConfig;"
        f"lab = Lab(LabConfig(data_dir=Path({str(tmp_path)!r})));"
        "assert lab.acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not Lab(LabConfig(data_dir=tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=5)
    lab = Lab(LabConfig(data_dir=tmp_path))
    assert lab.acquire()
    lab.stop()


def test_stale_pid_files_are_taken_over(tmp_path: Path) -> None:
    cfg = LabConfig(data_dir=tmp_path, stop_grace_s=2)
    lab = Lab(cfg, out=open(os.devnull, "w"))  # noqa: SIM115
    assert lab.acquire()
    orphan = _spawn("sleep 60 & sleep 60 & wait")  # what a SIGKILLed launcher leaves behind
    bystander = _spawn("sleep 60")  # a recycled pid: must be left alone
    try:
        write_pid_file(cfg.run_dir / "worker.pid", orphan.pid)
        write_pid_file(cfg.run_dir / "api.pid", bystander.pid)
        record = read_pid_file(cfg.run_dir / "api.pid")
        (cfg.run_dir / "api.pid").write_text(json.dumps({**record, "start_time": "1"}))
        lab._take_over_stale()
        _reap(orphan)
        assert not group_alive(orphan.pid)
        assert bystander.poll() is None, "a process with a recycled pid was stopped"
        assert not list(cfg.run_dir.glob("*.pid"))
    finally:
        stop_group(bystander.pid, bystander.pid, 2)
        _reap(bystander)
        stop_group(orphan.pid, orphan.pid, 2)
        lab.stop()


def test_config_from_env_names_the_bad_variable(tmp_path: Path) -> None:
    cfg = LabConfig.from_env(
        {"PFT_DATA_DIR": str(tmp_path), "PFT_API_PORT": "9001", "PFT_AUTO_PRETRAIN": "0"}
    )
    assert cfg.api_port == 9001 and cfg.dashboard_port == 8501 and cfg.redis_port is None
    assert not cfg.auto_pretrain
    assert cfg.dashboard_url == "http://127.0.0.1:8501"
    assert cfg.token_file == tmp_path / "api_token"
    with pytest.raises(LaunchError, match="PFT_API_PORT"):
        LabConfig.from_env({"PFT_API_PORT": "http"})
    with pytest.raises(LaunchError, match="PFT_DASHBOARD_PORT.*1-65535"):
        LabConfig.from_env({"PFT_DASHBOARD_PORT": "70000"})


def test_a_busy_port_is_refused_with_the_variable_to_change(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        lab = Lab(LabConfig(data_dir=tmp_path, api_port=port))
        with pytest.raises(LaunchError, match=f"port {port} \\(PFT_API_PORT\\)"):
            lab._check_ports()

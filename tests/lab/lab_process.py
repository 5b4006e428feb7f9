"""Runs `pft up` as a real subprocess in a temporary data folder on free ports.

Shared by the launcher tests and the browser end-to-end test (``tests/e2e``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.processes import group_alive, http_ok, read_pid_file

PFT = Path(sys.executable).with_name("pft")
SERVICES = ("redis", "api", "worker", "dashboard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test lab: its own folder and ports, no inherited PFT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFT_")}
    env.update(
        PFT_DATA_DIR=str(data_dir),
        PFT_API_PORT=str(free_port()),
        PFT_DASHBOARD_PORT=str(free_port()),
        PFT_AUTO_PRETRAIN="0",
        PFT_STOP_GRACE_S="10",
        PFT_START_TIMEOUT_S="90",
        PFT_DEVICE="cpu",
    )
    env.update(extra)
    return env


@dataclass
class LabProcess:
    """A `pft up` launcher running in its own session, with its output collected."""

    env: dict[str, str]
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, env: dict[str, str]) -> LabProcess:
        proc = subprocess.Popen(
            [str(PFT), "up"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lab = cls(env, proc)
        threading.Thread(target=lab._pump, daemon=True).start()
        return lab

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def data_dir(self) -> Path:
        return Path(self.env["PFT_DATA_DIR"])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PFT_API_PORT']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PFT_DASHBOARD_PORT']}"

    def wait_up(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "pft-lab is up" in self.output:
                return
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the pump read the last lines
                pytest.fail(f"`pft up` exited with {self.proc.returncode}:\n{self.output}")
            time.sleep(0.2)
        pytest.fail(f"`pft up` was not up within {timeout} s:\n{self.output}\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-20:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def service_records(self) -> dict[str, dict]:
        run = self.data_dir / "run"
        return {s: r for s in SERVICES if (r := read_pid_file(run / f"{s}.pid")) is not None}

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the launcher only (as `kill PID` would); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher did not stop within {timeout} s:\n{self.output}")


def wait_gone(records: dict[str, dict], timeout: float = 15) -> list[str]:
    """Names of the services whose process or process group is still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [
            name
            for name, r in records.items()
            if group_alive(r["pgid"] or r["pid"]) or _pid_alive(r["pid"])
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_leftovers(records: dict[str, dict]) -> None:
    """Last-resort cleanup so a failing test never leaves processes behind."""
    for r in records.values():
        for target, kill in ((r.get("pgid"), os.killpg), (r["pid"], os.kill)):
            if target:
                try:
                    kill(target, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


__all__ = ["LabProcess", "free_port", "http_ok", "kill_leftovers", "lab_env", "wait_gone"]

"""Processes the launcher owns: process groups, pid files that survive their writer, health.

A pid file records the pid, the process group it leads and the kernel's start time of the
process, so that a later launcher can tell "still our process" from "a recycled pid" before it
signals anything. Linux ``/proc`` is used where present; elsewhere the pid alone is trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pft.jobs.processes import alive

# --- process identity and pid files -------------------------------------------------------


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone.

    A pid file records it so that a recycled pid is never mistaken for our process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or no /proc (then pid files fall back to the pid alone)
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def write_pid_file(path: Path, pid: int, **extra: Any) -> None:
    """Records ``pid`` with its start time, and its process group if it leads one."""
    pgid = pgid_or_none(pid)
    record = {
        "pid": pid,
        "pgid": pgid if pgid == pid else None,  # never signal a group we do not own
        "start_time": start_time(pid),
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def read_pid_file(path: Path) -> dict[str, Any] | None:
    """The record of a pid file: ours (JSON), or a bare pid (``redis_server`` writes one)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, int):
        # No start time to compare: accept the pid only if it still runs the named program.
        return {"pid": record, "pgid": None, "start_time": None, "expect": path.stem}
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def pid_file_is_live(record: dict[str, Any]) -> bool:
    """The process the record names is still the one that wrote it."""
    pid = record["pid"]
    if not alive(pid):
        return False
    started = record.get("start_time")
    if started is not None:
        return start_time(pid) == started
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(record.get("expect", "")) in cmdline


def stop_group(pid: int, pgid: int | None, grace_s: float) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left after ``grace_s``."""
    target = pgid if pgid and pgid > 1 and pgid != os.getpgid(0) else None
    with contextlib.suppress(ProcessLookupError):
        if target:
            os.killpg(target, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    still = (lambda: group_alive(target)) if target else (lambda: alive(pid))
    while still() and time.monotonic() < deadline:
        time.sleep(0.1)
    if still():
        with contextlib.suppress(ProcessLookupError):
            if target:
                os.killpg(target, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while still() and time.monotonic() < deadline:
            time.sleep(0.05)


# --- health ---------------------------------------------------------------------------------


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pgid_or_none(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None

"""`pft up` with the real lab: Redis, API, worker and dashboard as real processes.

Each test starts the launcher as `make up` does (the `pft` console script, in its own session)
in a temporary data folder on free ports, with the backbone pre-training switched off
(``PFT_AUTO_PRETRAIN=0``) unless the test is about it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from contract.api import JobsPage
from tests.lab.lab_process import PFT, LabProcess, http_ok, kill_leftovers, lab_env, wait_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _api(lab: LabProcess, method: str, path: str, body: object = None) -> object:
    token = (lab.data_dir / "api_token").read_text().strip()
    req = urllib.request.Request(
        lab.api_url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _environ(pid: int) -> dict[str, str]:
    """The environment a running process was started with (Linux /proc)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _port_closed(url: str) -> bool:
    return not http_ok(url, timeout=1)


def _assert_private(data: Path) -> None:
    """The data folder is 0700, and nothing in it is readable by group or others: the database
    and its WAL, logs, pid files, tokens, Redis' files."""
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    expected = [data / "lab.db", data / "logs" / "api.log", data / "run" / "api.pid"]
    for path in expected:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in data.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if not stat.S_ISLNK(path.lstat().st_mode) and not stat.S_ISSOCK(path.lstat().st_mode):
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_up_twice_and_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    lab = LabProcess.start(lab_env(tmp_path / "data"))
    records: dict[str, dict] = {}
    try:
        lab.wait_up()
        records = lab.service_records()
        assert set(records) == {"redis", "api", "worker", "dashboard"}, lab.output

        # Health, as the launcher promised, and the printed URLs and token file.
        assert http_ok(lab.api_url + "/api/v1/health"), lab.logs()
        assert http_ok(lab.dashboard_url + "/_stcore/health"), lab.logs()
        assert lab.dashboard_url in lab.output
        token_file = lab.data_dir / "api_token"
        assert str(token_file) in lab.output
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert (lab.data_dir / "lab.db").exists()
        for name in ("api", "worker", "dashboard"):
            assert (lab.data_dir / "logs" / f"{name}.log").stat().st_size > 0, name
        # The data folder is private to its user (the launcher runs under umask 022 here).
        _assert_private(lab.data_dir)
        # Every service leads its own process group.
        for name, r in records.items():
            assert r["pgid"] == r["pid"], name

        # An authenticated call works, with the token the launcher printed.
        _api(lab, "GET", "/api/v1/jobs")

        # The worker reaches the lab through the API only: its URL and the worker token (the
        # file the API checks), and neither the database URL nor the users' token.
        worker_token = lab.data_dir / "worker_token"
        assert stat.S_IMODE(worker_token.stat().st_mode) == 0o600
        worker_env = _environ(records["worker"]["pid"])
        assert worker_env.get("PFT_WORKER_TOKEN") == worker_token.read_text().strip()
        assert worker_env.get("PFT_API_URL") == lab.api_url
        assert "PFT_DATABASE_URL" not in worker_env and "PFT_API_TOKEN" not in worker_env
        assert "PFT_WORKER_TOKEN" not in _environ(records["dashboard"]["pid"])

        # A second start answers at once and leaves the running lab alone.
        second = subprocess.run(
            [str(PFT), "up"], env=lab.env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"already up at {lab.dashboard_url}" in second.stdout
        assert http_ok(lab.api_url + "/api/v1/health")
        assert lab.service_records() == records

        assert lab.stop() == 0, lab.output
        assert "stopped" in lab.output
        assert wait_gone(records) == [], f"left behind: {records}"
        assert _port_closed(lab.api_url + "/api/v1/health")
        assert _port_closed(lab.dashboard_url + "/_stcore/health")
        assert not list((lab.data_dir / "run").glob("*.pid"))
    finally:
        if lab.proc.poll() is None:
            lab.proc.kill()
        kill_leftovers(records)


def test_a_killed_launcher_is_taken_over(tmp_path: Path) -> None:
    env = lab_env(tmp_path / "data")
    first = LabProcess.start(env)
    old: dict[str, dict] = {}
    new: dict[str, dict] = {}
    second = None
    try:
        first.wait_up()
        old = first.service_records()
        # SIGKILL the launcher alone: its services live on in their own sessions, holding ports.
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        assert http_ok(first.api_url + "/api/v1/health")

        second = LabProcess.start(env)
        second.wait_up()
        assert "left by a previous run" in second.output
        new = second.service_records()
        assert wait_gone(old) == [], "the stale services were not stopped"
        assert {r["pid"] for r in new.values()}.isdisjoint(r["pid"] for r in old.values())
        assert http_ok(second.api_url + "/api/v1/health")
        assert second.stop() == 0
        assert wait_gone(new) == []
    finally:
        for lab in (first, second):
            if lab is not None and lab.proc.poll() is None:
                lab.proc.kill()
        kill_leftovers(old)
        kill_leftovers(new)


def test_ctrl_c_while_starting_leaves_nothing_behind(tmp_path: Path) -> None:
    lab = LabProcess.start(lab_env(tmp_path / "data"))
    records: dict[str, dict] = {}
    try:
        api_pid = lab.data_dir / "run" / "api.pid"
        deadline = time.monotonic() + 60
        while not api_pid.exists() and time.monotonic() < deadline:
            assert lab.proc.poll() is None, lab.output
            time.sleep(0.05)
        records = lab.service_records()  # Redis and the API, still starting
        assert {"redis", "api"} <= set(records), lab.output
        assert "pft-lab is up" not in lab.output
        lab.proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert lab.proc.wait(timeout=60) == 0, lab.output
        assert "pft-lab is up" not in lab.output
        assert wait_gone(records) == [], f"left behind: {records}"
        assert not list((lab.data_dir / "run").glob("*.pid"))
    finally:
        if lab.proc.poll() is None:
            lab.proc.kill()
        kill_leftovers(records)


def test_a_crashed_worker_is_restarted(tmp_path: Path) -> None:
    lab = LabProcess.start(lab_env(tmp_path / "data"))
    records: dict[str, dict] = {}
    restarted: dict[str, dict] = {}
    try:
        lab.wait_up()
        records = lab.service_records()
        os.killpg(records["worker"]["pgid"], signal.SIGKILL)  # as the OOM killer would
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            restarted = lab.service_records()
            if restarted.get("worker", {}).get("pid") not in (None, records["worker"]["pid"]):
                break
            time.sleep(0.2)
        assert "worker exited with code" in lab.output and "restarting it" in lab.output
        assert restarted["worker"]["pid"] != records["worker"]["pid"], lab.output
        assert lab.proc.poll() is None, "the launcher stopped instead of restarting the worker"
        for name in ("redis", "api", "dashboard"):
            assert restarted[name] == records[name], f"{name} was restarted too"
        assert lab.stop() == 0
        assert wait_gone({**records, "new-worker": restarted["worker"]}) == []
    finally:
        if lab.proc.poll() is None:
            lab.proc.kill()
        kill_leftovers(records)
        kill_leftovers(restarted)


def test_missing_backbone_queues_its_pretraining(tmp_path: Path) -> None:
    # The worker would start pre-training at once (minutes of CPU); the test cancels the job as
    # soon as it has checked it.
    env = lab_env(tmp_path / "data", PFT_AUTO_PRETRAIN="1", PFT_SHIPPED_WEIGHTS="0")
    lab = LabProcess.start(env)
    records: dict[str, dict] = {}
    try:
        lab.wait_up()
        records = lab.service_records()
        deadline = time.monotonic() + 20
        while "pre-training" not in lab.output and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "queued its pre-training as job" in lab.output, lab.output
        jobs = _jobs(lab, "pretrain")
        assert len(jobs) == 1 and jobs[0]["status"] in {"queued", "running"}, jobs
        _api(lab, "POST", f"/api/v1/jobs/{jobs[0]['id']}/cancel")
        assert lab.stop() == 0
        assert wait_gone(records) == []
    finally:
        if lab.proc.poll() is None:
            lab.proc.kill()
        kill_leftovers(records)


def _jobs(lab: LabProcess, kind: str) -> list[dict]:
    page = JobsPage.model_validate(_api(lab, "GET", f"/api/v1/jobs?kind={kind}"))
    return [j.model_dump(mode="json") for j in page.items if j.kind == kind]


def test_the_shipped_backbone_fine_tunes_at_once(tmp_path: Path) -> None:
    """A fresh lab (auto pre-training on, as `make up` runs it) queues no pre-training: the
    package ships the backbone's weights, and a fine-tuning job of it runs to success."""
    env = lab_env(tmp_path / "data", PFT_AUTO_PRETRAIN="1")
    lab = LabProcess.start(env)
    records: dict[str, dict] = {}
    try:
        lab.wait_up()
        records = lab.service_records()
        job = _api(
            lab,
            "POST",
            "/api/v1/jobs",
            {
                "kind": "finetune",
                "model": "pft/vit-tiny-fmnist",
                "dataset": "digits",
                "strategy": {"name": "linear_probe"},
                "hparams": {"epochs": 1},
            },
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = _api(lab, "GET", f"/api/v1/jobs/{job['id']}")["status"]
            if status in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(0.5)
        assert status == "succeeded", (status, lab.logs())
        assert _jobs(lab, "pretrain") == [] and "pre-training" not in lab.output, lab.output
        assert not (lab.data_dir / "models").exists()  # nothing was copied or made
        assert lab.stop() == 0
        assert wait_gone(records) == []
    finally:
        if lab.proc.poll() is None:
            lab.proc.kill()
        kill_leftovers(records)

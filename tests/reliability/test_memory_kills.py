"""A job the kernel kills for memory fails with "out of memory", not three times "worker lost".

The OOM killer here is the kernel's own: the worker runs in a memory cgroup the test creates
(cgroup v1 ``memory.limit_in_bytes`` or v2 ``memory.max``), limited to what the idle worker
uses plus a few hundred MB, and the job's activations need more (a 4,096-token ViT at batch
64). Creating a cgroup needs root and a writable cgroup file system; where that is missing the
test is skipped and says why. The notes and counters themselves are tested without a kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from contract.vocab import JobStatus
from pft.jobs import memory_kills
from tests.reliability.conftest import REDIS_URL
from tests.worker.conftest import FINAL, Lab, make_lab

MB = 1 << 20
HEADROOM_MB = 400  # above the idle worker's usage: the greedy job needs well over 1 GB more
GREEDY = {"model_overrides": {"img_size": 128, "patch_size": 2}, "hparams": {"batch_size": 64}}


class MemoryCgroup:
    """A memory cgroup of our own (v1 or v2), removed afterwards."""

    def __init__(self) -> None:
        name = f"pft-test-{uuid.uuid4().hex[:8]}"
        v1 = Path("/sys/fs/cgroup/memory")
        v2 = Path("/sys/fs/cgroup")
        if (v1 / "memory.limit_in_bytes").exists() or (v1 / "cgroup.procs").exists():
            self.path, self.limit_file, self.usage_file = (
                v1 / name,
                "memory.limit_in_bytes",
                ("memory.usage_in_bytes"),
            )
        elif "memory" in _read(v2 / "cgroup.controllers").split():
            self.path, self.limit_file, self.usage_file = v2 / name, "memory.max", "memory.current"
        else:
            pytest.skip("no cgroup memory controller here (/sys/fs/cgroup): cannot limit memory")
        try:
            self.path.mkdir()
        except OSError as exc:
            pytest.skip(f"cannot create a memory cgroup ({exc}): the test needs root")

    def usage_mb(self) -> float:
        return int(_read(self.path / self.usage_file)) / MB

    def limit(self, mb: float) -> None:
        (self.path / self.limit_file).write_text(str(int(mb * MB)))

    def wrap(self) -> list[str]:
        """A command prefix that moves the process into the cgroup, then runs the rest."""
        procs = self.path / "cgroup.procs"
        # The worker starts at oom_score_adj 0 where it may (pytest's own may have been raised
        # by in-process worker tests), as `pft worker` would.
        reset = "echo 0 > /proc/self/oom_score_adj 2>/dev/null;"
        return ["sh", "-c", f'{reset} echo $$ > {procs} && exec "$@"', "sh"]

    def remove(self) -> None:
        """Moves any process still in it to the parent cgroup, then removes it."""
        for _ in range(100):
            for pid in _read(self.path / "cgroup.procs").split():
                with contextlib.suppress(OSError):
                    (self.path.parent / "cgroup.procs").write_text(pid)
            try:
                self.path.rmdir()
                return
            except OSError:  # processes still leaving it
                time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@pytest.fixture
def cgroup() -> Iterator[MemoryCgroup]:
    group = MemoryCgroup()
    try:
        yield group
    finally:
        group.remove()


@pytest.fixture
def lab(tmp_path: Path, cgroup: MemoryCgroup) -> Iterator[Lab]:
    """A lab whose workers stop before the cgroup is removed (a cgroup with tasks cannot be)."""
    with make_lab(tmp_path, REDIS_URL, max_attempts=3) as the_lab:
        yield the_lab


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_the_kernel_kills_for_memory_fails_once_with_out_of_memory(lab: Lab, cgroup):
    try:
        _kill_for_memory(lab, cgroup)
    except BaseException:
        print(lab.logs())  # the worker's and the API's logs, shown with the failure
        raise


def _kill_for_memory(lab: Lab, cgroup: MemoryCgroup) -> None:
    worker = lab.start_worker("w1", wrap=cgroup.wrap())
    idle = cgroup.usage_mb()  # the Celery parent and its idle pool process, torch imported
    cgroup.limit(idle + HEADROOM_MB)
    greedy = lab.create_job(**GREEDY)
    job = lab.wait_status(greedy, FINAL, 240)
    print(f"idle worker {idle:.0f} MB, limit {idle + HEADROOM_MB:.0f} MB; error: {job.error}")
    assert job.status == JobStatus.FAILED, job
    assert job.error.startswith("out of memory: the kernel's OOM killer"), job.error
    assert "batch_size (now 64)" in job.error and "worker lost" not in job.error
    log = worker.log()
    assert "SIGKILL" in log  # Celery's own record of the pool process's end
    # the worker carries on: a job that fits runs in a fresh pool process
    good = lab.create_job(hparams={"epochs": 1, "batch_size": 8})
    done = lab.wait_status(good, FINAL, 120)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert worker.alive()
    assert list(lab.settings.layout.claim_notes.glob("*.json")) == []  # no note left behind


# -- the notes and the counters, without a kill ----------------------------------------------


def _claim(job_id: int = 7, attempt: int = 2) -> SimpleNamespace:
    spec = {"hparams": {"batch_size": 64}}
    return SimpleNamespace(job_id=job_id, claim="c-" + uuid.uuid4().hex, attempt=attempt, spec=spec)


def test_a_job_process_offers_itself_to_the_oom_killer_first(tmp_path):
    """In a process of its own (as a job's pool process), started at score 0."""
    adj = Path("/proc/self/oom_score_adj")
    if not adj.exists():
        pytest.skip("no /proc/self/oom_score_adj here (not Linux)")
    code = (
        "import sys, types; from pathlib import Path; from pft.jobs import memory_kills as m; "
        "adj = Path('/proc/self/oom_score_adj'); before = adj.read_text().strip(); "
        "c = types.SimpleNamespace(job_id=1, claim='c', attempt=1, spec={}); "
        "cm = m.claim_note(Path(sys.argv[1]), c); cm.__enter__(); "
        "print(before, adj.read_text().strip())"
    )

    def from_zero() -> None:  # pytest's own score may be raised (in-process worker tests)
        with contextlib.suppress(OSError):  # lowering needs CAP_SYS_RESOURCE (root has it)
            Path("/proc/self/oom_score_adj").write_text("0")

    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=from_zero,
    )
    before, after = (int(v) for v in out.stdout.split())
    if before >= memory_kills.OOM_SCORE_ADJ:
        pytest.skip(f"the test process's oom_score_adj is {before} and cannot be lowered here")
    assert after == memory_kills.OOM_SCORE_ADJ  # from 0: 500
    out = subprocess.run(  # from a parent already at 600 (say): above it
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: Path("/proc/self/oom_score_adj").write_text("600"),
    )
    assert out.stdout.split() == ["600", "900"]


def test_a_note_lives_while_its_job_runs_and_a_dead_processs_note_is_read_once(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(memory_kills, "volunteer_for_oom_killer", lambda: None)  # not pytest
    claim = _claim()
    with memory_kills.claim_note(tmp_path, claim) as path:
        note = json.loads(path.read_text())
        assert (note["job_id"], note["claim"], note["pid"]) == (7, claim.claim, os.getpid())
        assert note["batch_size"] == 64
        assert memory_kills.notes_of_dead_processes(tmp_path, 7) == []  # its process runs
    assert not path.exists()

    # a process that noted job 7 and died without removing its note (a SIGKILL)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(child.stdout)
    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n")
    (tmp_path / f"{dead}.json").write_text(
        json.dumps(
            {
                "job_id": 7,
                "claim": "c-dead",
                "attempt": 1,
                "pid": dead,
                "host": "h",
                "batch_size": 64,
                "oom_kills": {str(counter): 1},
            }
        )
    )
    assert memory_kills.memory_kill(tmp_path, 8) is None  # another job's: not this one
    assert memory_kills.memory_kill(tmp_path, 7) is None  # killed, but no OOM kill counted
    assert not (tmp_path / f"{dead}.json").exists()  # read once


def test_an_oom_kill_counted_since_the_note_names_the_claim_and_the_batch(tmp_path):
    counter = tmp_path / "memory.oom_control"
    counter.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    note = {
        "job_id": 3,
        "claim": "c-3",
        "attempt": 1,
        "pid": 2**22 + 1,  # above the kernel's pid_max: no such process
        "host": "gpu-host",
        "batch_size": 256,
        "oom_kills": {str(counter): 4},
    }
    (tmp_path / "1.json").write_text(json.dumps(note))
    counter.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")  # the kernel killed
    found = memory_kills.memory_kill(tmp_path, 3)
    assert (found["claim"], found["attempt"]) == ("c-3", 1)
    error = found["error"]
    assert error.startswith("out of memory: the kernel's OOM killer ended the process")
    assert "gpu-host" in error and "batch_size (now 256)" in error and "PFT_JOB_MEMORY_MB" in error


def test_the_counters_this_machine_has_are_read():
    counters = memory_kills.oom_kill_counters()
    if Path("/proc/vmstat").is_file():  # Linux: the machine-wide counter at least
        assert str(memory_kills.VMSTAT) in counters
        assert all(isinstance(n, int) and n >= 0 for n in counters.values())
    else:
        assert counters == {}

"""Telling a job process that the kernel killed for memory from one killed otherwise.

A job that needs more memory than its host has often sees no exception: the kernel's OOM killer
ends its process with SIGKILL. The worker's parent (Celery's main process) outlives its pool
process but learns only "signal 9", and the job would come back as "worker lost" after each of
its attempts. So each job process leaves a `ClaimNote` when it claims a job: the claim, and the
OOM kills the kernel had counted by then, for the process's memory cgroup (cgroup v2
``memory.events``, v1 ``memory.oom_control``) and for the whole machine (``/proc/vmstat``). When
a pool process dies by SIGKILL, the parent reads its note: a count that went up since means the
kernel killed for memory meanwhile, and the parent fails the job with `out_of_memory_error` at
once (no retry: it would die the same way each time). Any other kill is left to the API's
reconciler, which re-queues the job once its heartbeat is stale.

A job process also offers itself to the OOM killer first (``oom_score_adj`` 500, and 300
over its parent's, which any process may raise for itself): otherwise the kernel may pick the
worker's parent (its RSS counts the file pages of torch's libraries, which the job process's
reclaim evicted from its own), or another service on the host, and nobody is left to say what
happened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pft.jobs.processes import alive

log = logging.getLogger(__name__)

VMSTAT = Path("/proc/vmstat")
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))  # v2, hybrid v2


@dataclass(frozen=True)
class ClaimNote:
    """What a job process leaves while it runs a job (one file per process)."""

    job_id: int
    claim: str
    attempt: int
    pid: int
    host: str
    batch_size: int | None = None
    # counter file -> the OOM kills it showed when the job was claimed
    oom_kills: dict[str, int] = field(default_factory=dict)


def oom_kill_counters() -> dict[str, int]:
    """The OOM-kill counters this process can read now: its memory cgroup's and the machine's
    (empty where neither is readable, e.g. not on Linux)."""
    found = {}
    for path in [*_cgroup_counter_files(), VMSTAT]:
        if (count := _read_count(path)) is not None:
            found[str(path)] = count
    return found


def _cgroup_counter_files() -> list[Path]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, group = line.split(":", 2)
        rel = group.lstrip("/")
        if controllers == "":  # cgroup v2: memory.events of the unified hierarchy
            files += [root / rel / "memory.events" for root in CGROUP_ROOTS]
        elif "memory" in controllers.split(","):  # cgroup v1
            files.append(Path("/sys/fs/cgroup/memory") / rel / "memory.oom_control")
    return [f for f in files if f.is_file()]


def _read_count(path: Path) -> int | None:
    """The ``oom_kill N`` line of a counter file."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return None


@contextlib.contextmanager
def claim_note(folder: Path, claim: Any) -> Iterator[Path]:
    """This process's note on the job it just claimed (a `contract.api.Claim`), written
    atomically and removed when the job ends (a kill leaves it for `memory_kill`)."""
    hparams = claim.spec.get("hparams") if isinstance(claim.spec, dict) else None
    batch = hparams.get("batch_size") if isinstance(hparams, dict) else None
    note = ClaimNote(
        job_id=claim.job_id,
        claim=claim.claim,
        attempt=claim.attempt,
        pid=os.getpid(),
        host=socket.gethostname(),
        batch_size=batch if isinstance(batch, int) else None,
        oom_kills=oom_kill_counters(),
    )
    volunteer_for_oom_killer()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{note.pid}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(note)))
    os.replace(tmp, path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


OOM_SCORE_ADJ = 500  # of -1000 (never) .. 1000 (first): before any process left at 0
ABOVE_PARENT = 300  # and above the worker's parent, whose score the process inherited


def volunteer_for_oom_killer() -> None:
    """Makes this process the OOM killer's choice before its parent and the processes at a
    lower ``oom_score_adj``: at least `OOM_SCORE_ADJ`, and `ABOVE_PARENT` over the score it
    inherited (only ever raised: lowering needs privileges); nothing where there is no such
    file."""
    path = Path("/proc/self/oom_score_adj")
    try:
        inherited = int(path.read_text())
        wanted = min(1000, max(OOM_SCORE_ADJ, inherited + ABOVE_PARENT))
        if wanted > inherited:
            path.write_text(str(wanted))
    except (OSError, ValueError):
        log.info("could not raise this job process's oom_score_adj")


def memory_kill(folder: Path, job_id: int) -> dict[str, Any] | None:
    """After the process running ``job_id`` was killed: its claim, attempt and the job's
    error (`contract.api.KillReport`) when the kernel killed for memory meanwhile, else None.
    Reads and removes the dead processes' notes on the job."""
    found = None
    for path, note in notes_of_dead_processes(folder, job_id):
        path.unlink(missing_ok=True)
        if found is None and killed_for_memory(note):
            error = out_of_memory_error(note)
            found = {"claim": note.claim, "attempt": note.attempt, "error": error}
            log.error("job %s failed: %s", job_id, found["error"])
        elif found is None:
            log.warning("job %s: process %s was killed; no OOM kill counted", job_id, note.pid)
    return found


def notes_of_dead_processes(folder: Path, job_id: int) -> list[tuple[Path, ClaimNote]]:
    """The notes on ``job_id`` left by processes that no longer run, latest attempt first."""
    found = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            note = ClaimNote(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if note.job_id == job_id and not alive(note.pid):
            found.append((path, note))
    return sorted(found, key=lambda item: item[1].attempt, reverse=True)


def killed_for_memory(note: ClaimNote) -> bool:
    """Whether the kernel counted an OOM kill since the note was left (in the job process's
    memory cgroup or on the machine)."""
    for name, before in note.oom_kills.items():
        now = _read_count(Path(name))
        if now is not None and now > before:
            return True
    return False


def out_of_memory_error(note: ClaimNote) -> str:
    """The job's ``error`` when the kernel killed its process for memory."""
    batch = f" (now {note.batch_size})" if note.batch_size else ""
    return (
        f"out of memory: the kernel's OOM killer ended the process running this job on "
        f"{note.host} (SIGKILL, attempt {note.attempt}); lower hparams.batch_size{batch}, the "
        "image size or the model, or give the worker more memory (PFT_JOB_MEMORY_MB makes the "
        "API refuse jobs estimated not to fit); not retried: it would fail the same way"
    )

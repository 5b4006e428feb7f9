"""The artifact store: where job outputs (checkpoints, metrics, angles) live for every worker.

It is the science side's checkpoint storage (fsspec), used by the worker and by anything else
that reads or writes job folders. ``PFT_ARTIFACT_URL`` is a local folder by default
(``$PFT_DATA_DIR/artifacts``; a shared volume works across hosts too) or any fsspec URL
(``s3://bucket/prefix``, ``gcs://...``) for workers on many hosts. A job's outputs live under
``<store>/jobs/<job id>/``, so a job picked up again by another worker finds the last epoch
checkpoint of the previous attempt.

The engine writes to a local folder. For a local store that folder *is* the store; for a remote
store the worker works in a local cache, ``pull``s before a run (to resume) and ``push``es after
every checkpoint and at the end.

Attempts: each claim of a job works in its own folder, ``<store>/jobs/<id>/attempt-<n>/`` (`n`
one more than any attempt folder the store holds, `new_attempt`: retries and given-back jobs get
fresh folders too), seeded when it starts (`pull`) with what the latest earlier attempt left
(hard links where possible; checkpoint files are only ever replaced by renames, never changed in
place). A worker that lost its claim (stopped past the staleness window, then woken) can only
write into its own attempt's folder, which the database never points at: the artifacts a job
records are those of the attempt that finished it, so their sha256 always match the files.
Frozen-prefix caches are rebuilt, never copied or uploaded. Folders written before attempts
existed (files directly under ``jobs/<id>/``) seed the first attempt.

Origins: an attempt folder's marker (``attempt.json``) records the job's ``origin``, its identity
beyond the id (the claim's: the job's creation time in the database). Job ids start from 1
again in a new database (``lab.db`` lost or replaced), so ``jobs/1/`` may hold another job's
attempts: a new attempt is seeded only from attempts of its own origin (or of none recorded:
written before origins were), and pruning leaves the others alone (they are that other
database's files, should it come back from a backup).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pft.errors import PftError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored file: where it is, how large, and its content hash."""

    location: str  # absolute path (local store) or URL (remote store)
    size_bytes: int
    sha256: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


ATTEMPT_PREFIX = "attempt-"  # an attempt's folder inside a job's: attempt-1, attempt-2, ...
# Never copied to a later attempt nor uploaded: the frozen-prefix cache (rebuilt by the run); an
# attempt folder's marker is uploaded once, when the attempt starts.
ATTEMPT_MARKER = "attempt.json"
_NOT_SEEDED = ("prefix_cache", ATTEMPT_MARKER)
_POINTERS = ("state.json", "metrics.json")  # uploaded last: they name or complete other files
_ATTEMPT_IN = re.compile(rf"/jobs/\d+/({ATTEMPT_PREFIX}\d+)/")  # in a recorded location


def _job_rel(job_id: int, attempt: int | None = None) -> str:
    rel = f"jobs/{int(job_id)}"
    return f"{rel}/{ATTEMPT_PREFIX}{int(attempt)}" if attempt is not None else rel


def _attempts(names: Iterable[str]) -> dict[int, str]:
    """attempt number -> folder name, for the names that are attempt folders."""
    out = {}
    for name in names:
        number = name.removeprefix(ATTEMPT_PREFIX)
        if name.startswith(ATTEMPT_PREFIX) and number.isdigit():
            out[int(number)] = name
    return out


def _seeded(rel: str, *, legacy: bool) -> bool:
    """Whether the file ``rel`` (inside a job or attempt folder) travels to a later attempt
    or to the remote store: not a write in progress, a prefix cache or (for the job's own
    folder) another attempt's files."""
    parts = rel.split("/")
    name = parts[-1]
    if name.startswith(".") and name.endswith(".tmp"):
        return False
    if parts[0] in _NOT_SEEDED:
        return False
    return not (legacy and len(parts) > 1 and _attempts([parts[0]]))


def _own_files(folder: Path) -> Iterator[Path]:
    """The files of a job's (or an attempt's) folder that seed a later attempt."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and _seeded(path.relative_to(folder).as_posix(), legacy=True):
            yield path


class ArtifactStore:
    """Job folders in a local directory or behind an fsspec URL."""

    def __init__(self, url: str, cache_dir: str | Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.local = _is_local(self.url)
        if self.local:
            path = self.url[len("file://") :] if self.url.startswith("file://") else self.url
            self.root = Path(path).expanduser().resolve()
        else:
            if cache_dir is None:
                raise ValueError("a remote artifact store needs a local cache_dir")
            self.root = Path(cache_dir).expanduser().resolve()

    # -- local working folders ------------------------------------------------------------
    def job_dir(self, job_id: int, attempt: int | None = None) -> Path:
        """The local folder the engine reads and writes for ``job_id`` (created): the job's
        folder, or that of one of its attempts."""
        path = self.root / _job_rel(job_id, attempt)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _remote(self, job_id: int, rel: str = "", attempt: int | None = None) -> str:
        base = f"{self.url}/{_job_rel(job_id, attempt)}"
        return f"{base}/{rel}" if rel else base

    def latest_dir(self, job_id: int) -> Path | None:
        """The local folder of the job's latest attempt (or its pre-attempt folder); None when
        the job has none."""
        base = self.root / _job_rel(job_id)
        attempts = _attempts(p.name for p in base.iterdir()) if base.is_dir() else {}
        if attempts:
            return base / f"{ATTEMPT_PREFIX}{max(attempts)}"
        return base if base.is_dir() and any(_own_files(base)) else None

    def _fs(self):  # noqa: ANN202 (fsspec filesystem)
        import fsspec

        fs, _ = fsspec.core.url_to_fs(self.url)
        return fs

    # -- synchronisation with a remote store ----------------------------------------------
    def pull(self, job_id: int, attempt: int | None = None) -> Path:
        """Brings the job's stored files (a previous attempt's checkpoints) into ``job_dir``;
        for an ``attempt``, what the latest earlier attempt left (see the module docstring)."""
        if attempt is not None:
            return self._pull_attempt(job_id, attempt)
        local = self.job_dir(job_id)
        if self.local:
            return local
        fs = self._fs()
        remote = self._remote(job_id)
        if not fs.exists(remote):
            return local
        for path in fs.find(remote):
            rel = path[len(fs._strip_protocol(remote)) :].lstrip("/")
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        return local

    def new_attempt(self, job_id: int, origin: str = "") -> int:
        """Takes a fresh attempt number for a claim of ``job_id`` (of ``origin``, see the module
        docstring): one more than every attempt folder the store holds, locally and remotely;
        its marker is written at once (to the remote store too)."""
        base = self.root / _job_rel(job_id)
        base.mkdir(parents=True, exist_ok=True)
        taken = set(_attempts(p.name for p in base.iterdir()))
        if not self.local:
            taken |= set(_attempts(self._remote_names(job_id)))
        n = max(taken, default=0) + 1
        while True:
            try:
                (base / f"{ATTEMPT_PREFIX}{n}").mkdir()
                break
            except FileExistsError:  # taken a moment ago in this cache
                n += 1
        marker = {"attempt": n, "host": socket.gethostname(), "pid": os.getpid()}
        data = json.dumps({**marker, "origin": origin}).encode()
        (base / f"{ATTEMPT_PREFIX}{n}" / ATTEMPT_MARKER).write_bytes(data)
        if not self.local:
            self._fs().pipe_file(self._remote(job_id, ATTEMPT_MARKER, n), data)
        return n

    def _origin(self, job_id: int, attempt: int) -> str:
        """The origin an attempt folder's marker records ("" when none: an attempt made before
        origins were recorded, or an unreadable marker)."""
        try:
            if self.local:
                data = (self.root / _job_rel(job_id, attempt) / ATTEMPT_MARKER).read_bytes()
            else:
                data = self._fs().cat_file(self._remote(job_id, ATTEMPT_MARKER, attempt))
            return str(json.loads(data).get("origin") or "")
        except (OSError, ValueError, AttributeError):
            return ""

    def _own_attempts(self, job_id: int, numbers: Iterable[int], origin: str) -> list[int]:
        """Those of the attempt ``numbers`` that belong to the job of ``origin``."""
        if not origin:
            return list(numbers)
        return [m for m in numbers if self._origin(job_id, m) in ("", origin)]

    def _remote_names(self, job_id: int) -> list[str]:
        fs = self._fs()
        remote = fs._strip_protocol(self._remote(job_id))
        if not fs.exists(remote):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(remote, detail=False)]

    def _pull_attempt(self, job_id: int, attempt: int) -> Path:
        local = self.job_dir(job_id, attempt)
        if any(p.name != ATTEMPT_MARKER for p in local.iterdir()):
            return local  # pulled already
        origin = self._origin(job_id, attempt)
        if self.local:
            base = self.root / _job_rel(job_id)
            earlier = [m for m in _attempts(p.name for p in base.iterdir()) if m < attempt]
            mine = self._own_attempts(job_id, earlier, origin)
            if earlier and not mine:
                return local  # only another database's job ran here: start afresh
            src = base / f"{ATTEMPT_PREFIX}{max(mine)}" if mine else base
            for path in _own_files(src):
                target = local / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:  # another file system, or no hard links there
                    shutil.copy2(path, target)
            return local
        fs = self._fs()
        remote = fs._strip_protocol(self._remote(job_id))
        names = self._remote_names(job_id)
        earlier = [m for m in _attempts(names) if m < attempt]
        mine = self._own_attempts(job_id, earlier, origin)
        if earlier and not mine:
            return local  # only another database's job ran here: start afresh
        src = f"{remote}/{ATTEMPT_PREFIX}{max(mine)}" if mine else remote
        for path in fs.find(src) if names else []:
            rel = path[len(src) :].lstrip("/")
            if not _seeded(rel, legacy=not mine):
                continue
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        return local

    def push(self, job_id: int, attempt: int | None = None) -> None:
        """Uploads every file of ``job_dir`` to the remote store (no-op for a local store).

        The files that name others go last (``state.json`` names its tensors file, and a
        ``metrics.json`` beside a delta marks a finished run), so a push cut short leaves the
        previous checkpoint whole. An attempt's remote folder then mirrors the local one: files
        the run has since replaced or cleared (older tensors, a finished run's state) go.
        """
        if self.local:
            return
        fs = self._fs()
        local = self.job_dir(job_id, attempt)
        files = {
            rel: path
            for path in local.rglob("*")
            if path.is_file()
            and _seeded(rel := path.relative_to(local).as_posix(), legacy=attempt is None)
        }  # not an atomic write in progress, a prefix cache or (legacy) another attempt
        for rel in sorted(files, key=lambda r: (r.rsplit("/", 1)[-1] in _POINTERS, r)):
            dest = self._remote(job_id, rel, attempt)
            fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(files[rel]), dest)
        if attempt is None:
            return
        remote = fs._strip_protocol(self._remote(job_id, attempt=attempt))
        gone = [
            path
            for path in fs.find(remote)
            if (rel := path[len(remote) :].lstrip("/")) not in files and rel != ATTEMPT_MARKER
        ]
        if gone:
            fs.rm(gone)

    def prune(self, job_id: int, keep: Iterable[str] = (), origin: str = "") -> None:
        """Removes the job's attempt folders (locally and in the remote store) but those holding
        one of the ``keep`` locations (the artifacts the job recorded) and those of another
        origin (another database's job): once the API took an attempt's end, the others are
        of no use to anyone."""
        kept = {m.group(1) for loc in keep if (m := _ATTEMPT_IN.search(loc))}
        base = self.root / _job_rel(job_id)
        local = _attempts(p.name for p in base.iterdir()) if base.is_dir() else {}
        remote = _attempts(self._remote_names(job_id)) if not self.local else {}
        ours = set(self._own_attempts(job_id, sorted(set(local) | set(remote)), origin))
        for number, name in local.items():
            if name not in kept and number in ours:
                shutil.rmtree(base / name, ignore_errors=True)
        if remote:
            fs = self._fs()
            for number, name in remote.items():
                if name not in kept and number in ours:
                    fs.rm(f"{fs._strip_protocol(self._remote(job_id))}/{name}", recursive=True)

    def clear(self, job_id: int) -> None:
        """Removes the job's files (local folder and remote copy)."""
        shutil.rmtree(self.root / "jobs" / str(int(job_id)), ignore_errors=True)
        if not self.local:
            fs = self._fs()
            remote = self._remote(job_id)
            if fs.exists(remote):
                fs.rm(remote, recursive=True)

    # -- records --------------------------------------------------------------------------
    def describe(self, job_id: int, rel: str, attempt: int | None = None) -> ArtifactInfo:
        """Location, size and sha256 of ``rel`` inside the job's (attempt's) folder."""
        path = self.job_dir(job_id, attempt) / rel
        location = str(path) if self.local else self._remote(job_id, rel, attempt)
        return ArtifactInfo(location, path.stat().st_size, sha256_file(path))

    def fetch_verified(self, location: str, sha256: str, what: str) -> Path:
        """`fetch`, then the file checked against the sha256 recorded when it was written;
        PftError naming ``what`` (e.g. "checkpoint of job 7") when unreadable or different."""
        try:
            path = self.fetch(location)
            digest = sha256_file(path)
        except (OSError, ValueError) as exc:
            raise PftError(f"{what} cannot be read: {exc}") from None
        if digest != sha256:
            raise PftError(
                f"corrupt {what} ({location}): its sha256 does not match the one recorded "
                "when it was written; run its job again"
            )
        return path

    def fetch(self, location: str) -> Path:
        """A local path for an artifact ``location`` recorded by :meth:`describe`.

        Remote files are downloaded into the cache (kept while their size matches).
        """
        if _is_local(location):
            # Containment after resolving `..` and symlinks: a recorded location never leads
            # the worker outside its store.
            path = Path(location.removeprefix("file://")).resolve()
            root = self.root.resolve()
            if path != root and root not in path.parents:
                raise ValueError(f"artifact {location!r} is outside the store {root}")
            return path
        prefix = f"{self.url}/"
        if not location.startswith(prefix):
            raise ValueError(f"artifact {location!r} is not in the store {self.url!r}")
        target = self.root / location[len(prefix) :]
        fs = self._fs()
        size = fs.size(location)
        if not (target.exists() and target.stat().st_size == size):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            fs.get_file(location, str(tmp))
            os.replace(tmp, target)
        return target

"""The artifact store: where job outputs (checkpoints, metrics, angles) live for every worker.

It is the science side's checkpoint storage (fsspec), used by the worker and by anything else
that reads or writes job folders. ``PFT_ARTIFACT_URL`` is a local folder by default
(``$PFT_DATA_DIR/artifacts``; a shared volume works across hosts too) or any fsspec URL
(``s3://bucket/prefix``, ``gcs://...``) for workers on many hosts. A job's outputs live under
``<store>/jobs/<job id>/``, so a job picked up again by another worker finds the last epoch
checkpoint of the previous attempt.

The engine writes to a local folder. For a local store that folder *is* the store; for a remote
store the worker works in a local cache, ``pull``s before a run (to resume) and ``push``es after
every epoch and at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

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
    def job_dir(self, job_id: int) -> Path:
        """The local folder the engine reads and writes for ``job_id`` (created)."""
        path = self.root / "jobs" / str(int(job_id))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _remote(self, job_id: int, rel: str = "") -> str:
        base = f"{self.url}/jobs/{int(job_id)}"
        return f"{base}/{rel}" if rel else base

    def _fs(self):  # noqa: ANN202 (fsspec filesystem)
        import fsspec

        fs, _ = fsspec.core.url_to_fs(self.url)
        return fs

    # -- synchronisation with a remote store ----------------------------------------------
    def pull(self, job_id: int) -> Path:
        """Brings the job's stored files (a previous attempt's checkpoints) into ``job_dir``."""
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

    def push(self, job_id: int) -> None:
        """Uploads every file of ``job_dir`` to the remote store (no-op for a local store)."""
        if self.local:
            return
        fs = self._fs()
        local = self.job_dir(job_id)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                continue  # an atomic write in progress
            rel = path.relative_to(local).as_posix()
            dest = self._remote(job_id, rel)
            fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), dest)

    def clear(self, job_id: int) -> None:
        """Removes the job's files (local folder and remote copy)."""
        shutil.rmtree(self.root / "jobs" / str(int(job_id)), ignore_errors=True)
        if not self.local:
            fs = self._fs()
            remote = self._remote(job_id)
            if fs.exists(remote):
                fs.rm(remote, recursive=True)

    # -- records --------------------------------------------------------------------------
    def describe(self, job_id: int, rel: str) -> ArtifactInfo:
        """Location, size and sha256 of ``rel`` inside the job's folder (file must exist)."""
        path = self.job_dir(job_id) / rel
        location = str(path) if self.local else self._remote(job_id, rel)
        return ArtifactInfo(location, path.stat().st_size, sha256_file(path))

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

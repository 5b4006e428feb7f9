"""A job's stored file read back for download: found in the artifact store, checked against the
sha256 recorded when it was written, then handed out as an open file.

The API serves only files inside the store the workers write (`ApiSettings.artifact_url`, the
workers' ``PFT_ARTIFACT_URL``; `pft.store.ArtifactStore.fetch` refuses any other location), so a
recorded location can never make the API read an arbitrary file of its host. A remote store's
file is copied into the API's own cache first (fsspec, kept while its size matches): its bytes
must be hashed before the first one is sent anyway.

The file is opened once and hashed through that handle, and the same handle is streamed: an
artifact replaced in between (workers publish with an atomic rename) cannot make the bytes sent
differ from the bytes checked.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from backend.core.config import ApiSettings
from backend.db.models import Artifact
from pft.store import ArtifactStore

_CHUNK = 1 << 20


class ArtifactUnavailable(Exception):
    """The recorded file cannot be served; ``str()`` says why and what to do."""


class ArtifactGone(ArtifactUnavailable):
    """The recorded file no longer exists in the store."""


class ArtifactCorrupt(ArtifactUnavailable):
    """The stored bytes do not hash to the sha256 recorded when the file was written."""


class ArtifactOutsideStore(ArtifactUnavailable):
    """The recorded location is not in this API's artifact store."""


class StoreUnreachable(ArtifactUnavailable):
    """The (remote) store could not be read."""


def api_store(settings: ApiSettings) -> ArtifactStore:
    """The workers' store as the API reads it (a remote one through ``artifact-cache/api``)."""
    return ArtifactStore(
        settings.resolved_artifact_url, cache_dir=settings.layout.artifact_cache / "api"
    )


def _local_path(store: ArtifactStore, artifact: Artifact, what: str) -> Path:
    try:
        return store.fetch(artifact.location)
    except ValueError:
        raise ArtifactOutsideStore(
            f"{what} was recorded at {artifact.location!r}, outside this API's artifact store "
            f"({store.url}); set PFT_ARTIFACT_URL of the API to the workers' store"
        ) from None
    except FileNotFoundError:
        raise ArtifactGone(f"{what} is gone from the artifact store; run its job again") from None
    except Exception as exc:  # any fsspec backend's failure: one clear error
        raise StoreUnreachable(
            f"{what} could not be read from the artifact store {store.url} "
            f"({type(exc).__name__}: {exc})"
        ) from None


def open_verified(store: ArtifactStore, artifact: Artifact, what: str) -> BinaryIO:
    """The artifact's file, open at its start, after its bytes hashed to the recorded sha256.

    Raises an `ArtifactUnavailable` naming ``what`` (e.g. "the delta of job 7") otherwise; the
    caller closes the file.
    """
    path = _local_path(store, artifact, what)
    try:
        f = open(path, "rb")  # handed to the caller, who closes it
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ArtifactGone(f"{what} is gone from the artifact store; run its job again") from None
    except OSError as exc:
        raise StoreUnreachable(f"{what} cannot be read: {exc.strerror or exc}") from None
    try:
        digest = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        f.seek(0)
    except OSError as exc:
        f.close()
        raise StoreUnreachable(f"{what} cannot be read: {exc.strerror or exc}") from None
    if digest.hexdigest() != artifact.sha256:
        f.close()
        raise ArtifactCorrupt(
            f"{what} was changed after it was recorded: its sha256 is {digest.hexdigest()}, "
            f"not the recorded {artifact.sha256}; run its job again"
        )
    return f


def file_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def chunks(f: BinaryIO):  # noqa: ANN201 (a generator of bytes)
    """The file's bytes in chunks; closes it at the end (or when the client goes away)."""
    try:
        while chunk := f.read(_CHUNK):
            yield chunk
    finally:
        f.close()

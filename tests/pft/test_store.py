"""The artifact store: a local folder, and an fsspec URL (the in-memory filesystem stands in
for s3://, which cannot be reached from here)."""

from __future__ import annotations

import hashlib
import uuid

import fsspec
import pytest

from pft.store import ArtifactStore


def test_local_store_is_the_working_folder(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    folder = store.job_dir(3)
    assert folder == tmp_path / "artifacts" / "jobs" / "3" and folder.is_dir()
    (folder / "delta.safetensors").write_bytes(b"abc")
    info = store.describe(3, "delta.safetensors")
    assert info.location == str(folder / "delta.safetensors")
    assert info.size_bytes == 3 and info.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert store.fetch(info.location) == folder / "delta.safetensors"
    store.push(3)  # no-op
    assert store.pull(3) == folder
    assert ArtifactStore(f"file://{tmp_path / 'artifacts'}").root == store.root


def test_remote_store_pushes_pulls_and_fetches(tmp_path):
    url = f"memory://pft-{uuid.uuid4().hex[:8]}/artifacts"
    writer = ArtifactStore(url, cache_dir=tmp_path / "host-a")
    folder = writer.job_dir(5)
    (folder / "state").mkdir()
    (folder / "state" / "state.json").write_text('{"epoch": 2}')
    (folder / "delta.safetensors").write_bytes(b"tensor bytes")
    (folder / ".delta.safetensors.123.tmp").write_bytes(b"half written")
    writer.push(5)
    fs = fsspec.filesystem("memory")
    assert fs.exists(f"{url}/jobs/5/state/state.json")
    assert not fs.exists(f"{url}/jobs/5/.delta.safetensors.123.tmp")

    # Another host resumes the job: it pulls the previous attempt's files into its own cache.
    reader = ArtifactStore(url, cache_dir=tmp_path / "host-b")
    local = reader.pull(5)
    assert local == tmp_path / "host-b" / "jobs" / "5"
    assert (local / "state" / "state.json").read_text() == '{"epoch": 2}'

    info = writer.describe(5, "delta.safetensors")
    assert info.location == f"{url}/jobs/5/delta.safetensors"
    fetched = ArtifactStore(url, cache_dir=tmp_path / "host-c").fetch(info.location)
    assert fetched.read_bytes() == b"tensor bytes"
    with pytest.raises(ValueError, match="not in the store"):
        reader.fetch("memory://elsewhere/x")

    writer.clear(5)
    assert not fs.exists(f"{url}/jobs/5")
    assert ArtifactStore(url, cache_dir=tmp_path / "host-d").pull(5).is_dir()  # empty, no error


def test_remote_store_needs_a_cache():
    with pytest.raises(ValueError, match="cache_dir"):
        ArtifactStore("memory://x")

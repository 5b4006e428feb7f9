"""The artifact store: a local folder, and an fsspec URL (the in-memory filesystem stands in
for s3://, which cannot be reached from here)."""

from __future__ import annotations

import hashlib
import json
import os
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


def test_each_attempt_has_its_own_folder_seeded_by_the_latest_one(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    legacy = store.job_dir(4)  # a folder written before attempts existed
    (legacy / "state").mkdir()
    (legacy / "state" / "state.json").write_text('{"epoch": 1}')
    first = store.new_attempt(4)
    assert first == 1
    one = store.pull(4, first)
    assert one == legacy / "attempt-1"
    assert (one / "state" / "state.json").read_text() == '{"epoch": 1}'  # seeded by the legacy
    (one / "prefix_cache").mkdir()
    (one / "prefix_cache" / "train.npy").write_bytes(b"cache")
    (one / ".metrics.json.9.tmp").write_bytes(b"half")
    # the attempt replaces its checkpoint (atomically: a new file, as the engine does)
    (one / "state" / "new.json").write_text('{"epoch": 2}')
    os.replace(one / "state" / "new.json", one / "state" / "state.json")

    second = store.new_attempt(4)
    assert second == 2
    two = store.pull(4, second)
    assert (two / "state" / "state.json").read_text() == '{"epoch": 2}'
    assert not (two / "prefix_cache").exists() and not (two / ".metrics.json.9.tmp").exists()
    assert not (two / "attempt-1").exists()
    # a stale first attempt that writes on cannot touch the second attempt's files
    stale = one / "state" / "stale.json"
    stale.write_text('{"epoch": 9}')
    os.replace(stale, one / "state" / "state.json")
    assert (two / "state" / "state.json").read_text() == '{"epoch": 2}'
    (two / "delta.safetensors").write_bytes(b"final")
    info = store.describe(4, "delta.safetensors", second)
    assert info.location == str(two / "delta.safetensors")
    assert store.latest_dir(4) == two
    # numbers never repeat (a retry resets the job's attempt count, not the store's folders)
    assert store.new_attempt(4) == 3 and store.latest_dir(4) == legacy / "attempt-3"
    assert store.latest_dir(99) is None


def test_remote_attempts_are_numbered_across_hosts_and_seeded_from_the_bucket(tmp_path):
    url = f"memory://pft-{uuid.uuid4().hex[:8]}/artifacts"
    a = ArtifactStore(url, cache_dir=tmp_path / "host-a")
    n = a.new_attempt(6)
    folder = a.pull(6, n)
    (folder / "state").mkdir()
    (folder / "state" / "state.json").write_text('{"epoch": 3}')
    (folder / "prefix_cache").mkdir()
    (folder / "prefix_cache" / "train.npy").write_bytes(b"big cache")
    a.push(6, n)
    fs = fsspec.filesystem("memory")
    assert fs.exists(f"{url}/jobs/6/attempt-1/state/state.json")
    assert not fs.exists(f"{url}/jobs/6/attempt-1/prefix_cache/train.npy")  # never uploaded

    b = ArtifactStore(url, cache_dir=tmp_path / "host-b")  # another host takes the job over
    m = b.new_attempt(6)
    assert m == 2  # host b has no local folder, but the bucket holds attempt 1
    local = b.pull(6, m)
    assert local == tmp_path / "host-b" / "jobs" / "6" / "attempt-2"
    assert (local / "state" / "state.json").read_text() == '{"epoch": 3}'
    assert json.loads((local / "attempt.json").read_text())["attempt"] == 2  # its own marker
    assert (
        b.describe(6, "state/state.json", m).location == f"{url}/jobs/6/attempt-2/state/state.json"
    )


def test_a_push_uploads_pointers_last_mirrors_the_attempt_and_prune_keeps_the_recorded(tmp_path):
    url = f"memory://pft-{uuid.uuid4().hex[:8]}/artifacts"
    store = ArtifactStore(url, cache_dir=tmp_path / "host")
    fs = fsspec.filesystem("memory")
    n = store.new_attempt(8)
    state = store.pull(8, n) / "state"
    state.mkdir()
    (state / "tensors-1.safetensors").write_bytes(b"epoch 1")
    (state / "state.json").write_text('{"tensors": "tensors-1.safetensors"}')
    order: list[str] = []
    put_file = fs.put_file
    fs.put_file = lambda lpath, rpath, **kw: (
        order.append(rpath.rsplit("/", 1)[-1]),
        put_file(lpath, rpath, **kw),
    )
    try:
        store.push(8, n)
    finally:
        fs.put_file = put_file
    assert order == ["tensors-1.safetensors", "state.json"]  # the pointer after what it names
    # the engine replaces its checkpoint: the bucket mirrors it (the old tensors go)
    (state / "tensors-2.safetensors").write_bytes(b"epoch 2")
    (state / "state.json").write_text('{"tensors": "tensors-2.safetensors"}')
    (state / "tensors-1.safetensors").unlink()
    store.push(8, n)
    remote = f"{url}/jobs/8/attempt-{n}"
    assert not fs.exists(f"{remote}/state/tensors-1.safetensors")
    assert fs.exists(f"{remote}/state/tensors-2.safetensors") and fs.exists(
        f"{remote}/attempt.json"
    )

    later = store.new_attempt(8)
    store.pull(8, later)
    (store.job_dir(8, later) / "delta.safetensors").write_bytes(b"final")
    store.push(8, later)
    store.prune(8, keep=[store.describe(8, "delta.safetensors", later).location])
    assert not fs.exists(remote) and not store.job_dir(8).joinpath(f"attempt-{n}").exists()
    assert fs.exists(f"{url}/jobs/8/attempt-{later}/delta.safetensors")
    assert store.latest_dir(8) == tmp_path / "host" / "jobs" / "8" / f"attempt-{later}"


@pytest.mark.parametrize("remote", [False, True])
def test_another_databases_job_with_the_same_id_is_neither_resumed_nor_pruned(tmp_path, remote):
    """A new lab.db counts job ids from 1 again: job 3 of the new database must start afresh,
    not from the finished run job 3 of the lost one left in the store, and leave it alone."""
    url = f"memory://pft-{uuid.uuid4().hex[:8]}/artifacts" if remote else str(tmp_path / "a")
    old = ArtifactStore(url, cache_dir=tmp_path / "old")
    n = old.new_attempt(3, origin="2026-11-30T10:00:00")
    (old.pull(3, n) / "metrics.json").write_text('{"old": true}')
    old.push(3, n)

    new = ArtifactStore(url, cache_dir=tmp_path / "new")
    m = new.new_attempt(3, origin="2026-12-02T09:00:00")
    assert m == n + 1  # numbered after the old attempts all the same
    folder = new.pull(3, m)
    assert sorted(p.name for p in folder.iterdir()) == ["attempt.json"]  # nothing seeded
    (folder / "metrics.json").write_text('{"new": true}')
    new.push(3, m)
    k = new.new_attempt(3, origin="2026-12-02T09:00:00")  # a retry of the new job
    assert (new.pull(3, k) / "metrics.json").read_text() == '{"new": true}'  # its own attempt
    new.prune(3, keep=[new.describe(3, "metrics.json", k).location], origin="2026-12-02T09:00:00")
    if remote:
        fs = fsspec.filesystem("memory")
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/jobs/3", detail=False))
    else:
        names = sorted(p.name for p in (tmp_path / "a" / "jobs" / "3").iterdir())
    assert names == [f"attempt-{n}", f"attempt-{k}"]  # the old job's attempt stays; m is pruned

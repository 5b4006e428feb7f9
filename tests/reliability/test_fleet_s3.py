"""Fleet mode for real: two worker hosts on one S3 bucket, one SIGKILLed mid-job.

Every process is real: an S3 server (moto's, in its own process), the API under uvicorn on
PostgreSQL, the system Redis, and two ``celery worker``s standing for two GPU hosts. The hosts
share only what a fleet's hosts share: the API's URL and worker token, the broker and the bucket
(``PFT_ARTIFACT_URL=s3://...``, the endpoint and credentials in the standard ``AWS_*``
variables). Each has its own data folder, so its own local artifact cache (``artifact-cache/``).

Host A runs a reference job, then a second job with the same config until the bucket holds that
job's first epoch checkpoint, and is SIGKILLed (its whole process group). Host B, started with an
empty cache, claims the job the reconciler re-queues, resumes from the checkpoint it pulls from
the bucket and ends bit-identical to the reference: the same per-epoch metrics and a
byte-identical delta file, recorded at an ``s3://`` URL in its own attempt folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec
import httpx
import psycopg
import pytest
import s3fs
import torch
from torch import nn

from contract.vocab import JobStatus
from pft.run_state import RunState, check_resume_state, completed_epochs, save_state
from pft.store import ArtifactStore
from tests.reliability.conftest import REDIS_URL
from tests.worker.conftest import FINAL, Lab, free_port, make_lab, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"  # as tests/backend/conftest.py
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BUCKET = "pft-fleet"
ARTIFACTS = f"s3://{BUCKET}/artifacts"  # every host's PFT_ARTIFACT_URL
CREDENTIALS = {  # moto accepts any; a host needs them set
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
EPOCHS = 3
HPARAMS = {"epochs": EPOCHS, "batch_size": 4, "seed": 7}


@contextmanager
def s3_server(log_path: Path) -> Iterator[str]:
    """moto's S3 server on a free loopback port, in its own process group; its endpoint URL."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(endpoint, timeout=1).status_code < 500
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        wait_for(answers, 60, "the S3 server", poll=0.2)
        assert proc.poll() is None, f"the S3 server exited:\n{log_path.read_text()[-3000:]}"
        yield endpoint
    finally:
        proc.kill()
        proc.wait(10)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema of the ``test`` database (the API migrates it); dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@dataclass
class Fleet:
    lab: Lab
    endpoint: str
    s3: s3fs.S3FileSystem  # the test's own view of the bucket

    def host_env(self, name: str) -> dict[str, str]:
        """A worker host's environment: its own data folder, the fleet's bucket."""
        return {
            "PFT_DATA_DIR": str(self.host_data(name)),
            "PFT_ARTIFACT_URL": ARTIFACTS,
            "AWS_ENDPOINT_URL": self.endpoint,
            **CREDENTIALS,
        }

    def host_data(self, name: str) -> Path:
        return self.lab.root / f"host-{name}"

    def job_files(self, job_id: int) -> list[str]:
        """The bucket's files of a job, relative to its folder (``attempt-1/state/...``)."""
        base = f"{BUCKET}/artifacts/jobs/{job_id}"
        self.s3.invalidate_cache()
        return sorted(p[len(base) + 1 :] for p in self.s3.find(base))

    def read(self, rel: str) -> bytes:
        self.s3.invalidate_cache()
        return self.s3.cat_file(f"{BUCKET}/artifacts/{rel}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with s3_server(tmp_path / "s3.log") as endpoint, postgres_schema() as db_url:
        s3 = s3fs.S3FileSystem(
            key="testing", secret="testing", endpoint_url=endpoint, skip_instance_cache=True
        )
        s3.mkdir(BUCKET)
        with make_lab(tmp_path, REDIS_URL, max_attempts=20, database_url=db_url) as lab:
            # The API reads the bucket too (artifact downloads): restarted with the hosts' store.
            lab.api.stop()
            lab.api.env.update(
                {"PFT_ARTIFACT_URL": ARTIFACTS, "AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}
            )
            lab.api.start()
            yield Fleet(lab, endpoint, s3)


def _checkpoint_in_bucket(fleet: Fleet, job_id: int) -> int:
    """Epochs completed by the newest checkpoint in the bucket whose state.json and the tensors
    file it names are both there (0: none yet)."""
    files = fleet.job_files(job_id)
    for rel in reversed(files):
        if rel.startswith("attempt-") and rel.endswith("/state/state.json"):
            saved = json.loads(fleet.read(f"jobs/{job_id}/{rel}"))
            if rel.replace("state.json", saved["tensors"]) in files:
                return int(saved["run"]["epoch"])
    return 0


def test_a_host_killed_mid_job_and_another_host_resumes_it_from_the_bucket(fleet: Fleet):
    try:
        _kill_a_host_and_resume_on_another(fleet)
    except BaseException:
        print(fleet.lab.logs())  # the hosts' and the API's logs, shown with the failure
        raise


def _kill_a_host_and_resume_on_another(fleet: Fleet) -> None:
    lab = fleet.lab
    a = lab.start_worker("a", env=fleet.host_env("a"))
    reference = lab.create_job(hparams=HPARAMS)
    ref = lab.wait_status(reference, FINAL, 180)
    assert ref.status == JobStatus.SUCCEEDED, ref.error

    job_id = lab.create_job(hparams=HPARAMS)
    wait_for(lambda: _checkpoint_in_bucket(fleet, job_id) >= 1, 120, "a checkpoint in the bucket")
    a.kill_group(signal.SIGKILL)
    a.proc.wait(10)
    in_bucket = _checkpoint_in_bucket(fleet, job_id)
    assert lab.job(job_id).status in (JobStatus.RUNNING, JobStatus.QUEUED)
    assert 1 <= in_bucket < EPOCHS, "the job finished before the kill; raise EPOCHS"
    assert not (fleet.host_data("b") / "artifact-cache").exists()  # host B starts empty

    lab.start_worker("b", env=fleet.host_env("b"))
    job = lab.wait_status(job_id, FINAL, 180)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    # B resumed from A's checkpoint, which it could only have found in the bucket
    assert job.result["resumed_from_epoch"] >= in_bucket >= 1
    assert job.result["resumed_from_step"] > 0
    # each host's cache holds its own attempt only: what B knew of A's came through the bucket
    caches = {h: fleet.host_data(h) / "artifact-cache" / f"jobs/{job_id}" for h in "ab"}
    assert [p.name for p in caches["a"].iterdir()] == ["attempt-1"]
    assert [p.name for p in caches["b"].iterdir()] == ["attempt-2"]

    # once the API took B's success, the bucket keeps only the attempt the job recorded, and
    # that attempt's folder mirrors B's (its resumable state was cleared at the end)
    # (the worker prunes right after the API took the end: wait for it, do not race it)
    def pruned() -> list[str] | None:
        files = fleet.job_files(job_id)
        return None if any(n.startswith("attempt-1/") for n in files) else files

    files = wait_for(
        pruned,
        60,
        "host B to prune the other attempts from the bucket",
    )
    assert files == [
        f"attempt-2/{name}"
        for name in ("angles.json", "attempt.json", "delta.safetensors", "metrics.json")
    ], files
    marker = json.loads(fleet.read(f"jobs/{job_id}/attempt-2/attempt.json"))
    assert marker["attempt"] == 2 and marker["host"]

    # the same run as the uninterrupted one, epoch by epoch
    rows, ref_rows = lab.metrics(job_id), lab.metrics(reference)
    assert [m.epoch for m in rows] == [m.epoch for m in ref_rows] == list(range(1, EPOCHS + 1))
    for name in ("test_acc", "heldout_acc", "train_loss"):
        assert [getattr(m, name) for m in rows] == [getattr(m, name) for m in ref_rows], name
    assert job.result["test_acc"] == ref.result["test_acc"]

    # recorded in the attempt folder that finished the job (a path inside the bucket)
    deltas = [lab.artifacts(j)["delta"] for j in (job_id, reference)]
    assert deltas[0].path == f"jobs/{job_id}/attempt-2/delta.safetensors"
    assert deltas[1].path == f"jobs/{reference}/attempt-1/delta.safetensors"
    for kind, artifact in lab.artifacts(job_id).items():
        assert artifact.path.startswith(f"jobs/{job_id}/attempt-2/"), kind
    # byte-identical files in the bucket, matching their recorded sha256
    blobs = [fleet.read(d.path) for d in deltas]
    assert blobs[0] == blobs[1]
    assert deltas[0].sha256 == deltas[1].sha256 == hashlib.sha256(blobs[0]).hexdigest()
    assert deltas[0].size_bytes == len(blobs[0])
    # and the API serves that file from the bucket
    with lab.api.client() as c:
        r = c.get(f"/jobs/{job_id}/artifacts/delta/file")
    assert r.status_code == 200, r.text
    assert r.content == blobs[0]
    print(
        f"killed with {in_bucket} epoch(s) in the bucket; host B resumed from epoch "
        f"{job.result['resumed_from_epoch']} (step {job.result['resumed_from_step']}); "
        f"delta sha256 {deltas[0].sha256[:12]}; the job's bucket folder: {files}"
    )


class _PowerCut(Exception):
    """Host A dies part-way through a push."""


def test_a_push_cut_short_leaves_the_bucket_a_checkpoint_to_resume_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with s3_server(tmp_path / "s3.log") as endpoint:
        for name, value in {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # the store's filesystem: on this endpoint
        try:
            _push_cut_short_then_resume(tmp_path)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


def _push_cut_short_then_resume(tmp_path: Path) -> None:
    fs, _ = fsspec.core.url_to_fs(ARTIFACTS)  # the instance ArtifactStore uses (fsspec's cache)
    fs.mkdir(BUCKET)
    host_a = ArtifactStore(ARTIFACTS, cache_dir=tmp_path / "a")
    attempt = host_a.new_attempt(7)
    state = host_a.pull(7, attempt) / "state"
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())

    def epoch(n: int) -> None:  # one training step, then the epoch-end checkpoint
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        save_state(state, RunState(epoch=n, global_step=10 * n), {}, model, ["weight"], opt)

    epoch(1)
    host_a.push(7, attempt)  # the epoch 1 checkpoint, complete in the bucket
    epoch(2)
    put_file = fs.put_file

    def cut_after_state_json(lpath: str, rpath: str, **kw: object) -> None:
        put_file(lpath, rpath, **kw)
        if os.path.basename(rpath) == "state.json":
            raise _PowerCut(rpath)

    fs.put_file = cut_after_state_json
    try:
        with pytest.raises(_PowerCut):
            host_a.push(7, attempt)
    finally:
        fs.put_file = put_file

    host_b = ArtifactStore(ARTIFACTS, cache_dir=tmp_path / "b")
    pulled = host_b.pull(7, host_b.new_attempt(7))
    # state.json went up last: the bucket holds the epoch-2 tensors it names (before the fix,
    # sorted order sent it first and this raised "corrupt checkpoint ... is missing")
    check_resume_state(pulled)
    assert completed_epochs(pulled) == 2

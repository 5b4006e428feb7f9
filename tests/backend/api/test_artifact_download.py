"""``GET /jobs/{id}/artifacts/{kind}/file``: a job's file through the API with the users' token,
checked against its recorded sha256; clear 404 / 409 / 410 answers, never a 500."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend import claims
from backend.core.config import ApiSettings
from backend.crud import DELTA_ARTIFACT
from backend.db.models import Job
from backend.db.session import get_engine, make_sessionmaker
from backend.main import create_app
from contract.api import ArtifactPublic, ArtifactReport, FinishReport
from contract.vocab import API_PREFIX, JobStatus
from tests.utils.factories import claimed, queued_finetune

from ..conftest import TOKEN, WORKER_TOKEN

BYTES = b"\x00pft-delta\xff" * 1000


@pytest.fixture
def db(settings: ApiSettings) -> Iterator[Session]:
    with make_sessionmaker(get_engine(settings.db_url))() as s:
        yield s


def _finish_with(db: Session, location: str, data: bytes, kind: str = DELTA_ARTIFACT) -> int:
    """A fine-tuning job that succeeded with one artifact recorded at ``location``."""
    job = queued_finetune(db)
    return _finish(db, job.id, location, data, kind)


def _finish(db: Session, job_id: int, location: str, data: bytes, kind: str) -> int:
    job = db.get(Job, job_id)
    claim = claimed(db, job)
    artifact = ArtifactReport(
        kind=kind, location=location, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    report = FinishReport(claim=claim, status=JobStatus.SUCCEEDED, artifacts=[artifact])
    assert claims.finish_job(db, job_id=job_id, claim=claim, report=report)
    return job_id


def _stored(
    settings: ApiSettings,
    db: Session,
    data: bytes = BYTES,
    name: str = "delta.safetensors",
    kind: str = DELTA_ARTIFACT,
) -> tuple[int, Path]:
    """A job whose file lies in the API's (local) artifact store, as a worker leaves it."""
    job = queued_finetune(db)
    path = settings.layout.artifacts / "jobs" / str(job.id) / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return _finish(db, job.id, str(path), data, kind), path


def test_the_checkpoint_downloads_with_its_recorded_hash(
    client: TestClient, settings: ApiSettings, db: Session
) -> None:
    job_id, path = _stored(settings, db)
    (listed,) = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts").json()
    artifact = ArtifactPublic.model_validate(listed)
    assert artifact.download == f"{API_PREFIX}/jobs/{job_id}/artifacts/delta/file"
    assert listed["download"] == artifact.download  # the JSON carries it too
    # where it is inside the store, never the server's own path
    assert listed["path"] == f"jobs/{job_id}/delta.safetensors"
    assert "location" not in listed and str(settings.layout.artifacts) not in str(listed)
    r = client.get(artifact.download)
    assert r.status_code == 200, r.text
    assert r.content == path.read_bytes() == BYTES
    digest = hashlib.sha256(BYTES).hexdigest()
    assert r.headers["x-checksum-sha256"] == digest == artifact.sha256
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["content-length"] == str(len(BYTES))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="job{job_id}-delta.safetensors"'
    )


def test_a_remote_location_is_listed_as_its_path_in_the_bucket(
    client: TestClient, db: Session
) -> None:
    job = queued_finetune(db)
    url = f"s3://lab-bucket/prefix/jobs/{job.id}/attempt-3/delta.safetensors"
    job_id = _finish(db, job.id, url, BYTES, DELTA_ARTIFACT)
    (listed,) = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts").json()
    assert "s3:" not in str(listed) and "lab-bucket" not in str(listed)
    assert listed["path"] == f"jobs/{job_id}/attempt-3/delta.safetensors"
    assert listed["file_name"] == f"job{job_id}-delta.safetensors"


def test_a_json_artifact_keeps_its_extension(
    client: TestClient, settings: ApiSettings, db: Session
) -> None:
    data = b'{"epochs": []}'
    job_id, _ = _stored(settings, db, data, name="metrics.json", kind="metrics")
    r = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts/metrics/file")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"].endswith(f'filename="job{job_id}-metrics.json"')


def test_the_download_needs_the_users_token(
    client: TestClient, settings: ApiSettings, db: Session
) -> None:
    job_id, _ = _stored(settings, db)
    url = f"{API_PREFIX}/jobs/{job_id}/artifacts/delta/file"
    with TestClient(client.app, raise_server_exceptions=False) as anonymous:
        r = anonymous.get(url)
        assert r.status_code == 401 and "API token" in r.json()["detail"]
        assert BYTES[:20] not in r.content
        for wrong in ("nope", WORKER_TOKEN):  # the worker token is not a user's credential
            r = anonymous.get(url, headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 401
        assert anonymous.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).content == BYTES


def test_unknown_jobs_and_kinds_are_404_naming_what_is_missing(
    client: TestClient, settings: ApiSettings, db: Session
) -> None:
    job_id, _ = _stored(settings, db)
    r = client.get(f"{API_PREFIX}/jobs/{job_id + 1000}/artifacts/delta/file")
    assert r.status_code == 404 and r.json()["detail"] == f"no job {job_id + 1000}"
    r = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts/angles/file")
    assert r.status_code == 404
    assert r.json()["detail"] == f"job {job_id} has no 'angles' artifact; it has: delta"
    queued = queued_finetune(db)
    r = client.get(f"{API_PREFIX}/jobs/{queued.id}/artifacts/delta/file")
    assert r.status_code == 404 and "none yet (the job is queued)" in r.json()["detail"]
    r = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts/..%2F..%2Fetc/file")
    assert r.status_code in (404, 422)


def test_a_tampered_or_vanished_file_is_a_clear_error(
    client: TestClient, settings: ApiSettings, db: Session
) -> None:
    job_id, path = _stored(settings, db)
    url = f"{API_PREFIX}/jobs/{job_id}/artifacts/delta/file"
    path.write_bytes(BYTES[:-1] + b"!")  # same size, other bytes
    r = client.get(url)
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert f"the delta file of job {job_id} was changed after it was recorded" in detail
    assert hashlib.sha256(BYTES).hexdigest() in detail and "Traceback" not in r.text
    path.unlink()
    r = client.get(url)
    assert r.status_code == 410
    assert r.json()["detail"] == (
        f"the delta file of job {job_id} is gone from the artifact store; run its job again"
    )


def test_a_location_outside_the_store_is_never_read(
    client: TestClient, settings: ApiSettings, db: Session, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not an artifact")
    job_id = _finish_with(db, str(secret), secret.read_bytes())
    r = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts/delta/file")
    assert r.status_code == 409
    assert "outside this API's artifact store" in r.json()["detail"]
    assert b"not an artifact" not in r.content
    link = settings.layout.artifacts / "jobs" / "link.safetensors"  # a symlink out of the store
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    job_id = _finish_with(db, str(link), secret.read_bytes())
    r = client.get(f"{API_PREFIX}/jobs/{job_id}/artifacts/delta/file")
    assert r.status_code == 409 and b"not an artifact" not in r.content


def test_a_remote_store_is_read_through_fsspec(settings: ApiSettings, db: Session) -> None:
    url = f"memory://pft-download-{uuid.uuid4().hex[:8]}"
    remote = settings.model_copy(update={"artifact_url": url})
    with TestClient(create_app(remote), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        job = queued_finetune(db)
        location = f"{url}/jobs/{job.id}/delta.safetensors"
        with fsspec.open(location, "wb") as f:
            f.write(BYTES)
        _finish(db, job.id, location, BYTES, DELTA_ARTIFACT)
        r = c.get(f"{API_PREFIX}/jobs/{job.id}/artifacts/delta/file")
        assert r.status_code == 200 and r.content == BYTES
        fsspec.filesystem("memory").rm(location)
        (
            settings.layout.artifact_cache / "api" / "jobs" / str(job.id) / "delta.safetensors"
        ).unlink()
        r = c.get(f"{API_PREFIX}/jobs/{job.id}/artifacts/delta/file")
        assert r.status_code == 410 and "gone from the artifact store" in r.json()["detail"]

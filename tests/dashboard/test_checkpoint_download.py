"""The Jobs and Soups pages' "Download checkpoint" button: there for a finished job, it serves
the stored file's bytes (fetched by the dashboard with its token; the page never holds it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import streamlit.testing.v1.app_test as app_test
from streamlit.runtime.media_file_manager import MediaFileManager

from contract.layout import DataLayout
from contract.vocab import JobStatus
from tests.dashboard.conftest import (
    Backend,
    claim,
    submit_experiment,
)
from tests.dashboard.test_pages import assert_clean, page

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def lab(own_lab: Backend) -> Backend:
    return own_lab


class _Recording(MediaFileManager):
    """AppTest's media file manager, kept so a test can run a deferred download."""

    made: list[_Recording] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _Recording.made.append(self)


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> list[_Recording]:
    _Recording.made = []
    monkeypatch.setattr(app_test, "MediaFileManager", _Recording)
    return _Recording.made


def _finish_with_file(backend: Backend, job_id: int, kind: str, data: bytes) -> Path:
    """Claims the job and finishes it with one file in the lab's artifact store."""
    path = DataLayout.at(backend.data_dir).artifacts / "jobs" / str(job_id) / f"{kind}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    token = claim(backend, job_id)["claim"]
    artifact = {
        "kind": kind,
        "location": str(path),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    body = {"claim": token, "status": JobStatus.SUCCEEDED.value, "artifacts": [artifact]}
    with backend.worker() as w:
        r = w.post(f"/jobs/{job_id}/finish", json=body)
    assert r.status_code == 204, r.text
    return path


def _served(at, media: list[_Recording], key: str) -> tuple[bytes, str]:
    """What clicking the download button ``key`` hands the browser: bytes and file name."""
    (button,) = [b for b in at.get("download_button") if b.key == key]
    file_id = button.proto.deferred_file_id
    assert file_id and not button.proto.url  # fetched on click, not held by the page
    (found,) = [m for m in media if file_id in m._deferred_callables]
    entry = found._deferred_callables[file_id]
    return entry["callable"](), entry["filename"]


def test_jobs_page_downloads_the_checkpoint(lab: Backend, media):
    created = submit_experiment(lab, [{"name": "attn_only"}])
    job_id = created["jobs"][0]["id"]
    data = b"checkpoint-bytes-" * 4096
    path = _finish_with_file(lab, job_id, "delta", data)
    at = page("jobs").run()
    at.selectbox(key="jobs-experiment").set_value(created["experiment"]["id"]).run()
    at.selectbox(key="job-select").set_value(job_id).run()
    assert_clean(at, lab)
    served, name = _served(at, media, "download-checkpoint")
    assert served == path.read_bytes() == data
    assert name == f"job{job_id}-delta.safetensors"
    assert any(hashlib.sha256(data).hexdigest() in c.value for c in at.caption)


def test_soups_page_downloads_the_soup(lab: Backend, media):
    created = submit_experiment(lab, [{"name": "ffn_only"}], seeds=[0, 1])
    a, b = (j["id"] for j in created["jobs"])
    for i in (a, b):
        _finish_with_file(lab, i, "delta", f"ingredient {i}".encode())
    with lab.client() as c:
        r = c.post("/soups", json={"ingredients": [a, b], "method": "uniform"})
    assert r.status_code == 201, r.text
    soup_job = r.json()["job_id"]
    data = b"soup-bytes-" * 1000
    _finish_with_file(lab, soup_job, "soup", data)
    at = page("soups").run()
    at.selectbox(key="soup-select").set_value(soup_job).run()
    assert_clean(at, lab)
    assert _served(at, media, "soup-download") == (data, f"job{soup_job}-soup.safetensors")


def test_a_job_without_checkpoint_has_no_button(lab: Backend, media):
    created = submit_experiment(lab, [{"name": "linear_probe"}])
    job_id = created["jobs"][0]["id"]
    at = page("jobs").run()
    at.selectbox(key="jobs-experiment").set_value(created["experiment"]["id"]).run()
    at.selectbox(key="job-select").set_value(job_id).run()
    assert_clean(at, lab)
    assert "download-checkpoint" not in [b.key for b in at.get("download_button")]

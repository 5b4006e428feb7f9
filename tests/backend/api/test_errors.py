"""Error handling: 413 for large bodies, JSON 422 for malformed ones, JSON 500 without traces."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from backend import crud


def test_large_bodies_get_413(client: TestClient) -> None:
    body = b'{"model": "' + b"x" * 2_000_000 + b'"}'
    r = client.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the streamed size counts
        for _ in range(30):
            yield b"x" * 100_000

    r = client.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post(
        "/api/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_unexpected_errors_are_json_500_without_a_trace(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug cannot be produced on purpose in correct code, so one is injected here."""

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(crud, "list_jobs", broken)
    with caplog.at_level(logging.ERROR, logger="backend.api"):
        r = client.get("/api/v1/jobs")
    assert r.status_code == 500
    body = r.json()
    assert body["detail"].startswith("internal server error") and len(body["error_id"]) == 12
    assert "secret" not in r.text and "Traceback" not in r.text
    assert body["error_id"] in caplog.text and "secret internal detail" in caplog.text

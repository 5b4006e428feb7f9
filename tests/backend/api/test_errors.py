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


def test_a_busy_database_is_503_with_retry_after(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No free pooled connection, or SQLite still locked after its busy timeout: the client is
    told to retry (nothing was written), not shown a 500. Waiting 30 s for the real timeouts
    would make a slow test, so the errors SQLAlchemy raises then are raised here."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    def pool_exhausted(*args, **kwargs):
        raise PoolTimeout("QueuePool limit of size 20 overflow 30 reached")

    def locked(*args, **kwargs):
        raise OperationalError("INSERT ...", {}, Exception("database is locked"))

    for failure in (pool_exhausted, locked):
        monkeypatch.setattr(crud, "list_jobs", failure)
        r = client.get("/api/v1/jobs")
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"].isdigit() and "retry" in r.json()["detail"]
        assert "QueuePool" not in r.text and "locked" not in r.text

    def other(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("no such table: jobs"))

    monkeypatch.setattr(crud, "list_jobs", other)
    assert client.get("/api/v1/jobs").status_code == 500

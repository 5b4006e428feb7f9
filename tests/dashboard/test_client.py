"""The API client's settings, token lookup, parsing and error messages (no backend here)."""

from __future__ import annotations

import socket

import httpx
import pytest

from contract.api import Health, JobsPage
from contract.settings import LabSettings
from contract.vocab import API_PREFIX, DEFAULT_API_PORT, DEFAULT_HOST
from dashboard.client import ApiClient, ApiError, client_from_settings, error_message
from dashboard.config import DashboardSettings


def test_settings_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PFT_API_URL", raising=False)
    monkeypatch.delenv("PFT_API_TOKEN", raising=False)
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    s = DashboardSettings()
    assert isinstance(s, LabSettings)
    assert s.resolved_api_url == f"http://{DEFAULT_HOST}:{DEFAULT_API_PORT}"
    assert s.token() is None  # no variable, no file yet
    (tmp_path / "api_token").write_text("from-file\n")
    assert s.token() == "from-file"
    monkeypatch.setenv("PFT_API_TOKEN", "from-env")
    monkeypatch.setenv("PFT_API_URL", "http://example.invalid:9")
    s = DashboardSettings()
    assert s.token() == "from-env"
    assert s.resolved_api_url == "http://example.invalid:9"
    assert "from-env" not in repr(s)  # a SecretStr: never printed by accident
    monkeypatch.setenv("PFT_DASHBOARD_PAGE_SIZE", "2")
    with pytest.raises(ValueError, match="dashboard_page_size"):
        DashboardSettings()


def _response(status: int, **kw) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", f"http://x{API_PREFIX}/jobs"), **kw)


def test_error_message_shapes():
    assert error_message(_response(404, json={"detail": "job 7 not found"})) == "job 7 not found"
    body = {
        "detail": [
            {"loc": ["body", "hparams", "epochs"], "msg": "must be at least 1"},
            {"loc": ["body", "model"], "msg": "unknown model 'vit_x'"},
        ]
    }
    assert error_message(_response(422, json=body)) == (
        "hparams.epochs: must be at least 1; model: unknown model 'vit_x'"
    )
    assert error_message(_response(409, json={"detail": "already finished"})) == (
        "already finished"
    )
    assert error_message(_response(500, text="Internal Server Error")) == "Internal Server Error"
    assert error_message(_response(502, text="")) == "HTTP 502 Bad Gateway"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_backend_is_an_api_error_naming_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    client = ApiClient(url, "t", timeout=2)
    with pytest.raises(ApiError) as info:
        client.jobs()
    assert info.value.status == 0
    assert url in info.value.message and "PFT_API_URL" in info.value.message


def test_token_is_read_lazily_from_the_file(monkeypatch, tmp_path):
    """The API may write its token after the dashboard started."""
    monkeypatch.delenv("PFT_API_TOKEN", raising=False)
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    client = client_from_settings(DashboardSettings())
    assert client._auth() == {}
    (tmp_path / "api_token").write_text("late-token\n")
    assert client._auth() == {"Authorization": "Bearer late-token"}


def test_results_file_rejects_unknown_formats():
    with pytest.raises(ValueError, match="csv or json"):
        ApiClient("http://127.0.0.1:1", "t").results_file(1, "xml")


def _client(handler) -> ApiClient:
    return ApiClient("http://api.test", "t", transport=httpx.MockTransport(handler))


def test_answers_are_the_apis_response_models():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"{API_PREFIX}/jobs"
        assert request.url.params["status"] == "queued" and "kind" not in request.url.params
        return httpx.Response(200, json={"items": [], "total": 0, "limit": 50, "offset": 0})

    page = _client(handler).jobs(status="queued", kind=None)
    assert isinstance(page, JobsPage) and page.total == 0


def test_an_answer_of_another_shape_is_an_api_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"id": 1}])  # a bare list where a page is due

    with pytest.raises(ApiError, match="unexpected shape"):
        _client(handler).jobs()


def test_a_degraded_api_is_a_health_answer_not_an_error():
    body = {
        "status": "degraded",
        "database": True,
        "database_writable": False,
        "broker": True,
        "version": "x",
    }
    health = _client(lambda r: httpx.Response(503, json=body)).health()
    assert isinstance(health, Health) and not health.database_writable

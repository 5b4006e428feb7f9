"""The API client's settings, token lookup and error messages (no backend needed here)."""

from __future__ import annotations

import socket

import httpx
import pytest

from dashboard.client import ApiClient, ApiError, client_from_settings, error_message
from dashboard.config import DashboardSettings


def test_settings_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PFT_API_URL", raising=False)
    monkeypatch.delenv("PFT_API_TOKEN", raising=False)
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    s = DashboardSettings()
    assert s.api_url == "http://127.0.0.1:8000"
    assert s.token() is None  # no variable, no file yet
    (tmp_path / "api_token").write_text("from-file\n")
    assert s.token() == "from-file"
    monkeypatch.setenv("PFT_API_TOKEN", "from-env")
    monkeypatch.setenv("PFT_API_URL", "http://example.invalid:9")
    s = DashboardSettings()
    assert s.token() == "from-env"
    assert s.api_url == "http://example.invalid:9"
    assert "from-env" not in repr(s)  # a SecretStr: never printed by accident
    monkeypatch.setenv("PFT_DASHBOARD_PAGE_SIZE", "2")
    with pytest.raises(ValueError, match="dashboard_page_size"):
        DashboardSettings()


def _response(status: int, **kw) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://x/api/v1/jobs"), **kw)


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
    assert error_message(_response(409, json={"detail": {"message": "already finished"}})) == (
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

"""The two tokens: generated once with mode 0600, or taken from PFT_API_TOKEN /
PFT_WORKER_TOKEN; and the API's settings defaults."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend.core.config import ApiSettings
from backend.core.security import api_token, token_matches, worker_token


def test_tokens_are_generated_once_with_mode_0600(tmp_path) -> None:
    settings = ApiSettings(data_dir=tmp_path / "d")
    with ThreadPoolExecutor(4) as pool:
        tokens = set(pool.map(lambda _: api_token(settings), range(8)))
    assert len(tokens) == 1
    token = tokens.pop()
    assert len(token) >= 32
    layout = settings.layout
    assert stat.S_IMODE(layout.api_token.stat().st_mode) == 0o600
    assert api_token(settings) == token
    worker = worker_token(settings)
    assert worker != token and worker_token(settings) == worker
    assert stat.S_IMODE(layout.worker_token.stat().st_mode) == 0o600
    assert sorted(p.name for p in layout.root.iterdir()) == ["api_token", "worker_token"]


def test_environment_tokens_win(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFT_API_TOKEN", "from-env")
    monkeypatch.setenv("PFT_WORKER_TOKEN", "worker-from-env")
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    settings = ApiSettings()
    assert api_token(settings) == "from-env"
    assert worker_token(settings) == "worker-from-env"
    assert not settings.layout.api_token.exists() and not settings.layout.worker_token.exists()
    assert "from-env" not in repr(settings)  # secrets stay out of logs


def test_an_empty_token_file_is_an_error(tmp_path) -> None:
    settings = ApiSettings(data_dir=tmp_path)
    settings.layout.worker_token.write_text("\n")
    with pytest.raises(RuntimeError, match="is empty"):
        worker_token(settings)


def test_the_api_refuses_one_token_for_both(tmp_path) -> None:
    from backend.main import create_app

    settings = ApiSettings(data_dir=tmp_path, api_token="same", worker_token="same")
    with pytest.raises(RuntimeError, match="must differ"):
        create_app(settings)


def test_token_comparison() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("abc", "")


def test_settings_defaults_are_embedded_mode(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    for var in ("PFT_DATABASE_URL", "PFT_BROKER_URL", "PFT_HEARTBEAT_STALE_S"):
        monkeypatch.delenv(var, raising=False)
    settings = ApiSettings()
    assert settings.db_url == f"sqlite:///{tmp_path.resolve() / 'lab.db'}"
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.heartbeat_stale_s == 60

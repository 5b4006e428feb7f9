"""The API token: generated once with mode 0600, or taken from PFT_API_TOKEN."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend.core.config import Settings
from backend.core.security import resolve_token, token_matches


def test_token_is_generated_once_with_mode_0600(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "d", api_token=None)
    with ThreadPoolExecutor(4) as pool:
        tokens = set(pool.map(lambda _: resolve_token(settings), range(8)))
    assert len(tokens) == 1
    token = tokens.pop()
    assert len(token) >= 32
    assert stat.S_IMODE(settings.token_path.stat().st_mode) == 0o600
    assert resolve_token(settings) == token
    assert [p.name for p in settings.token_path.parent.iterdir()] == ["api_token"]


def test_environment_token_wins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFT_API_TOKEN", "from-env")
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert resolve_token(settings) == "from-env"
    assert not settings.token_path.exists()


def test_token_comparison() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("abc", "")


def test_settings_defaults_are_embedded_mode(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    for var in ("PFT_DATABASE_URL", "PFT_BROKER_URL", "PFT_HEARTBEAT_STALE_S"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings()
    assert settings.db_url == f"sqlite:///{tmp_path.resolve() / 'lab.db'}"
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.heartbeat_stale_s == 60

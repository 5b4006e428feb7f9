"""The dashboard's settings: one pydantic-settings class read from ``PFT_*`` variables.

The token is read on the Streamlit server only (``PFT_API_TOKEN``, else the file the API writes
into ``$PFT_DATA_DIR/api_token``) and goes into the HTTP client's headers; no page renders it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PFT_", extra="ignore")

    api_url: str = Field("http://127.0.0.1:8000", description="where the backend listens")
    api_token: SecretStr | None = Field(None, description="bearer token; default: the token file")
    data_dir: Path = Field(Path("data"), description="data folder holding `api_token`")
    api_timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per backend request")
    dashboard_refresh_s: float = Field(
        2.0, ge=0.5, description="how often the Jobs page polls progress"
    )
    dashboard_page_size: int = Field(50, ge=5, le=500, description="jobs per page on the Jobs page")

    @property
    def token_path(self) -> Path:
        return self.data_dir.expanduser().resolve() / "api_token"

    def token(self) -> str | None:
        """The bearer token, or None when neither the variable nor the file exists yet."""
        if self.api_token is not None and self.api_token.get_secret_value():
            return self.api_token.get_secret_value()
        try:
            return self.token_path.read_text().strip() or None
        except OSError:
            return None


@cache
def get_settings() -> DashboardSettings:
    """The process-wide settings (read once from the environment)."""
    return DashboardSettings()

"""The dashboard's settings: the lab's settings base (`contract.settings.LabSettings`) plus what
only the dashboard reads.

The token is read on the Streamlit server only (``PFT_API_TOKEN``, else the file the API writes
into the data folder, `contract.layout.DataLayout.api_token`) and goes into the HTTP client's
headers; no page renders it.
"""

from __future__ import annotations

from functools import cache

from pydantic import Field, SecretStr

from contract.settings import LabSettings, read_secret


class DashboardSettings(LabSettings):
    api_token: SecretStr | None = Field(None, description="bearer token; default: the token file")
    api_timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per backend request")
    dashboard_refresh_s: float = Field(
        2.0, ge=0.5, description="how often the Jobs page polls progress"
    )
    dashboard_page_size: int = Field(50, ge=5, le=500, description="jobs per page on the Jobs page")

    def token(self) -> str | None:
        """The bearer token, or None while neither the variable nor the file exists (the API
        writes the file when it first starts, possibly after the dashboard)."""
        return read_secret(self.api_token, self.layout.api_token)


@cache
def get_settings() -> DashboardSettings:
    """The process-wide settings (read once from the environment)."""
    return DashboardSettings()

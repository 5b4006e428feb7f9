"""The dashboard's settings: the lab's settings base (`contract.settings.LabSettings`) plus what
only the dashboard reads.

The token is read on the Streamlit server only (``PFT_API_TOKEN``, else the file the API writes
into the data folder, `contract.layout.DataLayout.api_token`) and goes into the HTTP client's
headers; no page renders it.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from contract.settings import LabSettings, read_secret
from dashboard.door import Policy, make_policy, parse_hosts


class DashboardSettings(LabSettings):
    api_token: SecretStr | None = Field(None, description="bearer token; default: the token file")
    api_timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per backend request")
    dashboard_refresh_s: float = Field(
        2.0, ge=0.5, description="how often the Jobs page polls progress"
    )
    dashboard_page_size: int = Field(50, ge=5, le=500, description="jobs per page on the Jobs page")
    # The door (`dashboard.door`, in front of the dashboard through `dashboard.server`).
    dashboard_allowed_hosts: str = Field(
        "",
        description="comma-separated public names the dashboard answers to (a reverse proxy's), "
        "besides loopback and its bind address; setting one turns the login on",
    )
    dashboard_login: Literal["auto", "always"] = Field(
        "auto",
        description="auto: a login whenever the dashboard is bound to anything but loopback or "
        "has a public name; always: on loopback too",
    )
    dashboard_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="how long a login lasts (the session cookie)"
    )

    @field_validator("dashboard_allowed_hosts")
    @classmethod
    def _hosts(cls, value: str) -> str:
        parse_hosts(value)
        return value

    def allowed_hosts(self) -> tuple[str, ...]:
        """``PFT_DASHBOARD_ALLOWED_HOSTS`` as host names."""
        return parse_hosts(self.dashboard_allowed_hosts)

    def door_policy(self, bind: str | None) -> Policy:
        """The door's policy for a dashboard bound to ``bind`` (Streamlit's ``server.address``;
        None, its default, is every interface)."""
        return make_policy(bind or "0.0.0.0", self)

    def token(self) -> str | None:
        """The bearer token, or None while neither the variable nor the file exists (the API
        writes the file when it first starts, possibly after the dashboard)."""
        return read_secret(self.api_token, self.layout.api_token)


@cache
def get_settings() -> DashboardSettings:
    """The process-wide settings (read once from the environment)."""
    return DashboardSettings()

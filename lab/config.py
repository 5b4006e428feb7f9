"""The launcher's settings (``pft up``): the lab's settings base plus what only the launcher reads.

Why a settings class and not hand-written parsing: every deployable reads its ``PFT_*``
variables the same way (`contract.settings.LabSettings`), so a variable means the same to the
launcher as to the API it starts, and a bad value is refused with the variable's name before
anything starts. Paths come from the data folder's layout (`contract.layout.DataLayout`).
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from contract.settings import LabSettings
from contract.vocab import DEFAULT_DASHBOARD_PORT, DEFAULT_HOST

# What the launcher and the services it starts create in the data folder is private to the
# user: folders 0700, files 0600 (the database, logs, pid files, Redis' files, tokens).
DATA_UMASK = 0o077


class SettingsError(ValueError):
    """A ``PFT_*`` variable has a value the launcher cannot use; the message names it."""


class LauncherSettings(LabSettings):
    # An empty variable (``PFT_REDIS_PORT=``) means "the default", as it always did.
    model_config = SettingsConfigDict(env_ignore_empty=True)

    lab_host: str = Field(
        DEFAULT_HOST,
        min_length=1,
        description="interface the API and dashboard listen on (0.0.0.0 exposes them)",
    )
    dashboard_port: int = Field(DEFAULT_DASHBOARD_PORT, ge=1, le=65535)
    redis_port: int | None = Field(
        None, ge=1, le=65535, description="the embedded Redis' port; default a free one"
    )
    auto_pretrain: bool = Field(
        True, description="queue the built-in backbone's pre-training when it is missing"
    )
    stop_grace_s: float = Field(
        20.0, ge=0, allow_inf_nan=False, description="seconds a service gets before SIGKILL"
    )
    start_timeout_s: float = Field(
        120.0, ge=0, allow_inf_nan=False, description="seconds a service gets to become healthy"
    )

    @property
    def lab_api_url(self) -> str:
        """Where the lab's own processes reach the API it starts."""
        return f"http://{_url_host(self.lab_host)}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{_url_host(self.lab_host)}:{self.dashboard_port}"


def _url_host(host: str) -> str:
    # A lab listening on every interface is still reached locally through loopback.
    return DEFAULT_HOST if host in {"0.0.0.0", "::", ""} else host


def load_settings() -> LauncherSettings:
    """The launcher's settings from the environment, or SettingsError naming each bad
    variable with its value (pydantic's own message names the field, not the variable)."""
    try:
        return LauncherSettings()
    except ValidationError as exc:
        prefix, problems = LauncherSettings.model_config.get("env_prefix", ""), []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            var = prefix + field.upper() if field else "settings"
            problems.append(f"{var}={error.get('input')!r}: {error['msg']}")
        raise SettingsError("; ".join(problems)) from None


__all__ = ["DATA_UMASK", "LauncherSettings", "SettingsError", "load_settings"]

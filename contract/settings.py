"""The settings base that every deployable extends: one pydantic-settings class per deployable
(API, worker, dashboard, launcher), all read from ``PFT_*`` environment variables with defaults
for the embedded mode (one machine, one data folder).

Fields that more than one deployable reads are declared here once; each deployable adds its own
in its package (`backend.core.config`, `worker.config`, `dashboard.config`, `lab.config`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.layout import DataLayout
from contract.vocab import DEFAULT_API_PORT, DEFAULT_BROKER_URL, DEFAULT_HOST, DEFAULT_QUEUE


class LabSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PFT_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="the data folder (see contract.layout)")
    datasets_dir: Path | None = Field(
        None, description="image folders and downloaded datasets; default $PFT_DATA_DIR/datasets"
    )
    api_host: str = Field(DEFAULT_HOST, description="where the API listens")
    api_port: int = Field(DEFAULT_API_PORT, ge=1, le=65535)
    api_url: str | None = Field(
        None, description="how clients reach the API; default http://PFT_API_HOST:PFT_API_PORT"
    )
    broker_url: str = Field(DEFAULT_BROKER_URL, description="Celery broker (Redis)")
    queue: str = Field(DEFAULT_QUEUE, description="Celery queue the jobs go to")
    heartbeat_stale_s: float = Field(
        60.0, gt=0, description="a running job whose heartbeat is older is presumed lost"
    )
    job_memory_mb: float | None = Field(
        None,
        gt=0,
        description="the most memory one job may use, MB: the API refuses a fine-tuning job "
        "whose estimated peak exceeds it; default: the largest device memory a calibrate job "
        "reported, else this host's physical memory",
    )
    shipped_weights: bool = Field(
        True,
        description="built-in backbones load the weights the package ships when the data folder "
        "has none of its own; false: they must be made by `pft pretrain` (`pft up` queues it)",
    )
    # The artifact store the workers write and the API reads to serve downloads
    # (`pft.store`; `backend.artifact_files` refuses files recorded anywhere else).
    artifact_url: str | None = Field(None, description="folder or fsspec URL; default artifacts/")

    @property
    def layout(self) -> DataLayout:
        return DataLayout.at(self.data_dir)

    @property
    def resolved_data_dir(self) -> Path:
        return self.layout.root

    @property
    def resolved_datasets_dir(self) -> Path:
        if self.datasets_dir is not None:
            return self.datasets_dir.expanduser().resolve()
        return self.layout.datasets

    @property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str(self.layout.artifacts)

    @property
    def resolved_api_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        host = DEFAULT_HOST if self.api_host in ("0.0.0.0", "::", "") else self.api_host
        return f"http://{host}:{self.api_port}"


def read_secret(value: SecretStr | None, file: Path) -> str | None:
    """A credential from its variable, else from its file; None when neither exists yet."""
    if value is not None and value.get_secret_value().strip():
        return value.get_secret_value().strip()
    try:
        return file.read_text().strip() or None
    except OSError:
        return None

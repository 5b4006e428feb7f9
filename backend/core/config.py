"""The backend's settings: one pydantic-settings class read from ``PFT_*`` environment variables.

Defaults suit the embedded mode (one machine, everything under one data folder): SQLite in
``$PFT_DATA_DIR/lab.db`` and the lab's own Redis on 127.0.0.1:6379. The worker reads the same
class for the database URL, the broker URL and the job-lifecycle limits.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TASK_NAME = "pft.run_job"  # the Celery task the backend enqueues (docs/CONTRACTS.md)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PFT_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="data folder (database, token, artifacts)")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite (WAL) at $PFT_DATA_DIR/lab.db"
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    queue: str = Field("pft", description="Celery queue the jobs go to")
    api_token: str | None = Field(
        None, description="bearer token; default: generated into $PFT_DATA_DIR/api_token (0600)"
    )
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    api_access_log: bool = Field(False, description="log every request (uvicorn access log)")
    heartbeat_stale_s: float = Field(
        60.0, gt=0, description="a running job whose heartbeat is older is presumed lost"
    )
    max_attempts: int = Field(3, ge=1, description="runs of one job before it is marked failed")
    enqueue_grace_s: float = Field(
        30.0, ge=0, description="a queued job enqueued this recently is never re-enqueued"
    )
    reconcile_interval_s: float = Field(
        30.0, ge=0, description="period of the API's reconciler thread; 0 disables it"
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'lab.db'}"

    @property
    def token_path(self) -> Path:
        return self.resolved_data_dir / "api_token"


@cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()

"""The API's settings: the shared `LabSettings` plus what only the API reads (``PFT_*``).

Defaults suit the embedded mode (one machine, one data folder): SQLite at
``DataLayout.database`` and the lab's own Redis. Workers never read this class: they reach the
lab through the API with the worker token (`worker.config.WorkerSettings`).
"""

from __future__ import annotations

from functools import cache

from pydantic import Field, SecretStr

from contract.settings import LabSettings


class ApiSettings(LabSettings):
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite (WAL) at $PFT_DATA_DIR/lab.db"
    )
    api_token: SecretStr | None = Field(
        None, description="the users' bearer token; default: the data folder's api_token (0600)"
    )
    worker_token: SecretStr | None = Field(
        None, description="the workers' bearer token; default: the data folder's worker_token"
    )
    api_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    api_access_log: bool = Field(False, description="log every request (uvicorn access log)")
    max_attempts: int = Field(3, ge=1, description="runs of one job before it is marked failed")
    enqueue_grace_s: float = Field(
        30.0, ge=0, description="a queued job enqueued this recently is never re-enqueued"
    )
    reconcile_interval_s: float = Field(
        30.0, ge=0, description="period of the API's reconciler thread; 0 disables it"
    )
    max_jobs_per_experiment: int = Field(
        256, ge=1, le=2048, description="strategies x seeds of one POST /experiments, at most"
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="a connection must deliver a whole request (headers and body) within this",
    )
    keep_alive_s: float = Field(
        5.0, gt=0, allow_inf_nan=False, description="idle keep-alive connections are closed after"
    )
    max_connections: int = Field(
        512,
        ge=10,
        description="open connections at most (beyond: 503, uvicorn's limit_concurrency); below "
        "the usual 1024 open files, so a flood cannot starve the database and the reconciler",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")

    @property
    def db_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        return self.database_url or self.layout.sqlite_url


@cache
def get_settings() -> ApiSettings:
    """The process-wide settings (read once from the environment)."""
    return ApiSettings()

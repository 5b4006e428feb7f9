"""Worker settings (``PFT_*``): `LabSettings` plus a worker's own; it reaches the lab through
the API (``PFT_API_URL``) with the worker token and holds no database URL."""

from __future__ import annotations

from functools import cache
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr, model_validator

from contract.settings import LabSettings
from pft.jobs.devices import check_device_setting


class WorkerSettings(LabSettings):
    # "cpu", "cuda", "cuda:1", "mps"; unset: cuda if available (resolved in the task only, so
    # CUDA is never initialised before the pool forks).
    device: Annotated[str | None, AfterValidator(check_device_setting)] = Field(
        None, description="torch device; default cuda if available"
    )
    heartbeat_interval_s: float = Field(3.0, gt=0, le=30, description="at most stale_s / 3")
    worker_token: SecretStr | None = Field(None, description="default: the file the API wrote")
    torch_threads: int | None = Field(None, ge=1, description="default: the CPUs we may use")
    report_timeout_s: float = Field(10.0, gt=0, description="one request to the API")
    report_retry_s: float = Field(600.0, gt=0, description="claims and ends retried this long")
    # A kill -9 (or a power cut) loses at most this much training: the engine saves a mid-epoch
    # checkpoint this often (and at every epoch end); 0 saves at epoch ends only.
    checkpoint_every_s: float = Field(
        300.0, ge=0, description="seconds between mid-epoch checkpoints; 0: epoch ends only"
    )

    @model_validator(mode="after")
    def _heartbeat_below_staleness(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 3 > self.heartbeat_stale_s:
            raise ValueError(
                f"PFT_HEARTBEAT_INTERVAL_S={self.heartbeat_interval_s} must be at most a third "
                f"of PFT_HEARTBEAT_STALE_S={self.heartbeat_stale_s}, or live jobs look dead"
            )
        return self


@cache
def get_settings() -> WorkerSettings:
    """The process-wide settings (environment read once)."""
    return WorkerSettings()

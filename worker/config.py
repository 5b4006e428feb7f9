"""Worker settings, read once from ``PFT_*`` environment variables (pydantic-settings).

The settings the API and the worker share (``PFT_DATA_DIR``, ``PFT_DATABASE_URL``,
``PFT_BROKER_URL``, ``PFT_QUEUE``, ``PFT_HEARTBEAT_STALE_S``, ``PFT_MAX_ATTEMPTS``) are declared
once, in ``backend.core.config.Settings`` (pydantic only, no FastAPI); the worker adds its own:
the device, the artifact store and the heartbeat period.
"""

from __future__ import annotations

from functools import cache

from pydantic import Field, field_validator, model_validator

from backend.core.config import Settings


class WorkerSettings(Settings):
    # PFT_DEVICE: "cpu", "cuda", "cuda:1", "mps"; unset means cuda if available, else cpu.
    # Resolved inside the task only, so CUDA is never initialised before the pool forks.
    device: str | None = Field(None, description="torch device; default cuda if available")
    # PFT_ARTIFACT_URL: a folder, or an fsspec URL (s3://bucket/prefix) that every worker can
    # reach; job outputs live under <artifact_url>/jobs/<job id>/.
    artifact_url: str | None = Field(
        None, description="artifact store; default $PFT_DATA_DIR/artifacts"
    )
    # PFT_HEARTBEAT_INTERVAL_S: how often a running job writes heartbeat + progress and reads
    # its cancel flag. Must be well below PFT_HEARTBEAT_STALE_S.
    heartbeat_interval_s: float = Field(3.0, gt=0, le=30)

    @field_validator("device")
    @classmethod
    def _device_known(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        v = v.strip()
        if v in {"cpu", "cuda", "mps"} or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"PFT_DEVICE={v!r} is not a device; accepted: cpu, cuda, cuda:N, mps")

    @model_validator(mode="after")
    def _heartbeat_below_staleness(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 3 > self.heartbeat_stale_s:
            raise ValueError(
                f"PFT_HEARTBEAT_INTERVAL_S={self.heartbeat_interval_s} must be at most a third "
                f"of PFT_HEARTBEAT_STALE_S={self.heartbeat_stale_s}, or live jobs look dead"
            )
        return self

    @property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str(self.resolved_data_dir / "artifacts")


@cache
def get_settings() -> WorkerSettings:
    """The process-wide settings (environment read once)."""
    return WorkerSettings()

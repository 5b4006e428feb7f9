"""The data folder's layout: where every file of the lab lives, defined once.

One data folder (``PFT_DATA_DIR``, default ``./data``) holds everything of an embedded lab::

    lab.db            SQLite database (with lab.db-wal / lab.db-shm beside it while open)
    api_token         the users' bearer token (0600)
    worker_token      the workers' credential for the worker routes (0600)
    artifacts/        the artifact store: jobs/<id>/ (checkpoints, metrics, angles)
    artifact-cache/   a worker's local copy of a remote (S3) store
    models/           built-in backbones: models/<name>/model.safetensors + model.json
    datasets/         image folders and downloaded datasets (PFT_DATASETS_DIR overrides)
    shapes/           unit-map shape tables computed at run time
    reproduce/        the reproduction study's runs
    logs/  redis/  run/   the launcher's logs, its Redis and its pid files
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    root: Path  # the data folder, resolved

    @classmethod
    def at(cls, folder: str | Path) -> DataLayout:
        return cls(Path(folder).expanduser().resolve())

    @property
    def database(self) -> Path:
        return self.root / "lab.db"

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def api_token(self) -> Path:
        return self.root / "api_token"

    @property
    def worker_token(self) -> Path:
        return self.root / "worker_token"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def artifact_cache(self) -> Path:
        return self.root / "artifact-cache"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_weights(self, name: str) -> Path:
        """Weights of a built-in backbone (``pft pretrain`` writes them)."""
        return self.models / name / "model.safetensors"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def shapes(self) -> Path:
        return self.root / "shapes"

    @property
    def reproduce(self) -> Path:
        return self.root / "reproduce"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def claim_notes(self) -> Path:
        """What each job process notes on the job it runs (`pft.jobs.memory_kills`)."""
        return self.run / "claims"

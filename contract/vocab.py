"""The lab's vocabulary, spelled once: job kinds and statuses, the Celery task, the API paths,
the default ports and the angle scopes."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    """What a job does; each kind has one typed spec in `pft.jobs.specs`."""

    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
    SOUP = "soup"
    RANK = "rank"  # per-unit scores of a selection criterion (`pft.criteria`)
    CALIBRATE = "calibrate"  # cost coefficients of a model on a worker's device (`pft.cost`)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class AngleScope(StrEnum):
    """An angle row measures one unit (``ATTN.3``) or one tensor (``blocks.3.attn.qkv.weight``)."""

    UNIT = "unit"
    TENSOR = "tensor"


FINAL_EPOCH = -1  # the `epoch` of angles measured on a job's final weights

TASK_NAME = "pft.run_job"  # the Celery task; its one argument is the job id (int)
DEFAULT_QUEUE = "pft"

API_PREFIX = "/api/v1"  # every route of the HTTP API lives below it
WORKER_ROUTES = "/worker"  # below API_PREFIX: the routes only workers call (worker token)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8000
DEFAULT_DASHBOARD_PORT = 8501
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

"""The Celery task ``pft.run_job(job_id)`` (idempotent: the rest comes from the API's claim).

The parent *imports* torch and pft before the pool forks (CUDA stays untouched), so each job's
fresh pool process starts in well under a second.
"""

from __future__ import annotations

import logging

from celery.signals import worker_init

from contract.vocab import TASK_NAME
from worker.celery_app import app

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, ignore_result=True, acks_late=False)
def run_job(job_id: int) -> str:
    from worker.attempt import run_job as run

    if isinstance(job_id, bool) or not isinstance(job_id, int):
        log.error("%s needs an integer job id, got %r; message dropped", TASK_NAME, job_id)
        return "rejected"
    return run(job_id)


@worker_init.connect
def _import_before_fork(**_: object) -> None:
    import worker.attempt  # noqa: F401

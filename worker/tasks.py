"""The Celery task ``pft.run_job(job_id)`` (idempotent: the rest comes from the API's claim).

The parent imports torch and pft (`worker.attempt`) before the pool forks (CUDA stays
untouched): each job's fresh pool process starts in well under a second. A pool process killed
mid-job may have been killed for memory (`worker.attempt.end_killed_job`)."""

from __future__ import annotations

import logging

from billiard.exceptions import WorkerLostError
from celery.signals import task_failure

from contract.vocab import TASK_NAME
from worker import attempt
from worker.celery_app import app

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, ignore_result=True, acks_late=False)
def run_job(job_id: int) -> str:
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        log.error("%s needs an integer job id, got %r; message dropped", TASK_NAME, job_id)
        return "rejected"
    return attempt.run_job(job_id)


@task_failure.connect
def _pool_process_lost(exception: object = None, args: tuple = (), **_: object) -> None:
    if isinstance(exception, WorkerLostError) and args and "SIGKILL" in str(exception):
        attempt.end_killed_job(int(args[0]))

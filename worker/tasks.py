"""The Celery task: ``pft.run_job(job_id)``, a thin wrapper around `worker.jobs.run_job`.

It takes only the job id, re-fetches everything from the database and is idempotent (see
`worker.celery_app` for the delivery guarantees). Worker-process hooks live here too:

* ``worker_init`` (the parent, before the pool forks): migrate the database, then *import*
  (never initialise) torch and the engine, so each job's fresh pool process starts in well
  under a second. CUDA is first touched inside the task, after the fork.
* ``worker_process_init`` (each pool process): drop database connections inherited from the
  parent, so no socket or SQLite handle is shared across processes.
"""

from __future__ import annotations

import logging

from celery.signals import worker_init, worker_process_init

from worker.celery_app import TASK_NAME, app
from worker.config import get_settings

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, ignore_result=True, acks_late=False)
def run_job(job_id: int) -> str:
    """Runs job ``job_id`` from the database; returns its outcome (see `worker.jobs`)."""
    from worker.jobs import run_job as run

    if isinstance(job_id, bool) or not isinstance(job_id, int):
        log.error("pft.run_job needs an integer job id, got %r; message dropped", job_id)
        return "rejected"
    return run(job_id)


@worker_init.connect
def _prepare_parent(**_: object) -> None:
    from backend.db.session import get_engine, migrate

    url = get_settings().db_url
    migrate(url)
    get_engine(url).dispose()  # no pooled connection may cross the fork
    import worker.jobs  # noqa: F401  (torch, timm and pft, imported once before forking)


@worker_process_init.connect
def _prepare_child(**_: object) -> None:
    from backend.db.session import get_engine

    get_engine(get_settings().db_url).dispose(close=False)

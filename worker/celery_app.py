"""The Celery application of the pft worker (``celery -A worker.celery_app worker``).

The broker only carries job ids; the API is the source of truth. Messages are acknowledged when
the task starts (``acks_late`` on Redis would hand a job running past the visibility timeout to
a second worker): the API's reconciler re-enqueues a job whose heartbeat went stale, and its
claim refuses a job running elsewhere, so a duplicate delivery never runs a job twice. No
prefetch (queued jobs wait in Redis for any idle worker); one job per process, a fresh pool
process per job (GPU memory goes back even after an out-of-memory error); json only.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from worker.config import get_settings


def make_app() -> Celery:
    settings = get_settings()
    celery = Celery("pft", include=["worker.tasks"])
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 120},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_queues=[Queue(settings.queue)],
        task_acks_late=False,
        # Only meaningful with late acks; a running job keeps running if Redis blips.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
    )
    return celery


app = make_app()

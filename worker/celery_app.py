"""The Celery application of the pft worker (``celery -A worker.celery_app worker``).

The broker (Redis) only carries job ids; the database is the source of truth for jobs.

Delivery guarantees: early ack + heartbeat reaper, not ``acks_late``
-------------------------------------------------------------------
Jobs run for minutes to days. With ``acks_late`` on Redis, an unacknowledged message comes back
only after the transport's ``visibility_timeout``; it must be longer than the longest job, or
Redis hands a job that is still running to a second worker. A worker killed mid-job would then
hold its job hostage for that long (days), far beyond the "running again within 2 minutes" we
promise. So the worker acknowledges a message when its task starts (``task_acks_late=False``)
and recovery is driven by the database instead:

* every running job writes a heartbeat every ``PFT_HEARTBEAT_INTERVAL_S`` seconds;
* the backend's reconciler (``backend/reconciler.py``) re-enqueues a running job whose heartbeat
  is older than ``PFT_STALE_AFTER_S`` (default 60 s), and queued jobs the broker lost;
* the task is idempotent by job id: it claims the job in one conditional UPDATE and skips it
  when it is cancelled, finished, or running elsewhere with a fresh heartbeat, so a duplicate
  delivery never runs a job twice; the engine resumes from the last epoch checkpoint.

With early ack, ``worker_prefetch_multiplier=1`` alone would still let a busy worker reserve the
*next* message while its job runs (the prefetch slot frees on ack), stranding that job behind a
long one. ``worker_disable_prefetch`` (Redis only) stops a worker reserving more messages than it
has free processes, so queued jobs wait in Redis where any idle worker can take them. A message
is then unacknowledged only for the milliseconds between BRPOP and the start of the task; the
short visibility timeout below redelivers it if the worker dies in exactly that window.

One job per worker process (``-c 1`` per device), a fresh pool process per job (GPU memory is
returned to the driver even after an out-of-memory error), json only, no result backend (the
task writes its results to the database).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from worker.config import get_settings

TASK_NAME = "pft.run_job"


def make_app() -> Celery:
    settings = get_settings()
    celery = Celery("pft", include=["worker.tasks"])
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        # Only broker messages that become unacknowledged for a moment (see above) are affected.
        broker_transport_options={"visibility_timeout": 120},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.queue,
        task_queues=[Queue(settings.queue)],
        task_routes={TASK_NAME: {"queue": settings.queue}},
        task_acks_late=False,
        # Only meaningful with late acks; a running job keeps running if Redis blips.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
    )
    return celery


app = make_app()

"""Sending jobs to the broker: the Celery *client* side only (no worker code, no torch).

The backend enqueues by task name (`contract.vocab.TASK_NAME`) with just the job id;
the database is the source of truth, so a failed send is not an error for the caller: the job
stays queued and the reconciler sends it again later.

Each message's task id is ``pft-job-<id>-<random>``, which lets the reconciler see which jobs
the broker holds (`broker_job_ids`) without knowing the worker.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from backend.core.config import ApiSettings
from contract.vocab import TASK_NAME

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)
_CLIENTS: dict[str, Celery] = {}
_LOCK = threading.Lock()
TASK_ID_PREFIX = "pft-job-"


def celery_client(broker_url: str) -> Celery:
    """A send-only Celery app for ``broker_url`` (created once per process, imported lazily)."""
    with _LOCK:
        if broker_url not in _CLIENTS:
            from celery import Celery

            app = Celery("pft-backend", broker=broker_url, set_as_current=False)
            app.conf.update(
                broker_connection_timeout=2,
                broker_connection_retry_on_startup=False,
                task_serializer="json",
                accept_content=["json"],
                broker_transport_options={"socket_timeout": 2, "socket_connect_timeout": 2},
            )
            _CLIENTS[broker_url] = app
        return _CLIENTS[broker_url]


def task_id_for(job_id: int) -> str:
    return f"{TASK_ID_PREFIX}{job_id}-{secrets.token_hex(4)}"


def job_id_of(task_id: str) -> int | None:
    """The job id inside a task id made by `task_id_for` (None for foreign task ids)."""
    if not task_id.startswith(TASK_ID_PREFIX):
        return None
    head = task_id[len(TASK_ID_PREFIX) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def enqueue_job(job_id: int, *, settings: ApiSettings) -> bool:
    """Sends the job task with ``job_id`` to the job queue; False (logged) if the broker is
    down."""
    try:
        celery_client(settings.broker_url).send_task(
            TASK_NAME,
            args=[job_id],
            queue=settings.queue,
            task_id=task_id_for(job_id),
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        )
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the job queued in the DB
        log.warning("could not enqueue job %s (%s); the reconciler will retry", job_id, exc)
        return False
    return True


def enqueue_jobs(job_ids: Iterable[int], *, settings: ApiSettings) -> list[int]:
    """Enqueues each job; returns the ids actually sent (stops trying once the broker fails)."""
    sent = []
    for job_id in job_ids:
        if not enqueue_job(job_id, settings=settings):
            break
        sent.append(job_id)
    return sent


def broker_job_ids(*, settings: ApiSettings) -> set[int] | None:
    """Job ids of the messages the Redis broker holds: waiting in the queue or delivered but
    not yet acknowledged. None when the broker is not Redis or cannot be read.
    """
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    try:
        client = redis.Redis.from_url(settings.broker_url, socket_timeout=2)
        raw = list(client.lrange(settings.queue, 0, -1))
        # kombu's Redis transport keeps one list per priority step: "<queue>\x06\x16<n>".
        for key in client.scan_iter(match=f"{settings.queue}\x06\x16*"):
            raw += client.lrange(key, 0, -1)
        # Delivered, not yet acknowledged: kombu's one "unacked" hash holds [message, exchange,
        # routing key] for every queue of this Redis database; keep only this lab's queue
        # (another lab on the same Redis numbers its jobs from 1 too).
        for entry in client.hvals("unacked"):
            message, _exchange, routing_key = json.loads(entry)
            if routing_key == settings.queue:
                raw.append(message)
    except (redis.RedisError, OSError, ValueError) as exc:
        log.warning("cannot read the broker's queue: %s", exc)
        return None
    ids = set()
    for message in raw:
        try:
            payload = json.loads(message) if isinstance(message, bytes | str) else message
            job_id = job_id_of(payload["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            continue
        if job_id is not None:
            ids.add(job_id)
    return ids


def broker_reachable(*, settings: ApiSettings, timeout: float = 1.0) -> bool:
    """Whether the broker answers (Redis PING)."""
    import redis

    try:
        client = redis.Redis.from_url(
            settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False

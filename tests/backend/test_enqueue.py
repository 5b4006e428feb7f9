"""Enqueueing by task name on the real Redis broker (database 14, a queue per test)."""

from __future__ import annotations

import base64
import json
import socket
import time

import redis

from backend.core.config import ApiSettings
from backend.enqueue import broker_job_ids, broker_reachable, enqueue_job, job_id_of, task_id_for

from .conftest import REDIS_URL


def _messages(queue: str) -> list[dict]:
    return [json.loads(m) for m in redis.Redis.from_url(REDIS_URL).lrange(queue, 0, -1)]


def test_enqueue_sends_the_task_name_and_only_the_job_id(queue_name: str, tmp_path) -> None:
    settings = ApiSettings(data_dir=tmp_path, broker_url=REDIS_URL, queue=queue_name)
    assert enqueue_job(41, settings=settings)
    assert enqueue_job(42, settings=settings)
    messages = _messages(queue_name)
    assert len(messages) == 2
    headers = messages[0]["headers"]
    assert headers["task"] == "pft.run_job"
    args, kwargs, _ = json.loads(base64.b64decode(messages[0]["body"]))
    assert (args, kwargs) in (([41], {}), ([42], {}))
    assert broker_job_ids(settings=settings) == {41, 42}


def test_unacked_messages_count_as_held(queue_name: str, tmp_path) -> None:
    settings = ApiSettings(data_dir=tmp_path, broker_url=REDIS_URL, queue=queue_name)
    client = redis.Redis.from_url(REDIS_URL)
    message = {"headers": {"id": task_id_for(7)}, "body": ""}
    tag = f"tag-{queue_name}"
    client.hset("unacked", tag, json.dumps([message, "", queue_name]))
    try:
        assert 7 in broker_job_ids(settings=settings)
    finally:
        client.hdel("unacked", tag)


def test_unacked_messages_of_another_queue_are_not_this_labs(queue_name: str, tmp_path) -> None:
    """Two labs on one Redis both number their jobs from 1; kombu keeps one unacked hash."""
    settings = ApiSettings(data_dir=tmp_path, broker_url=REDIS_URL, queue=queue_name)
    client = redis.Redis.from_url(REDIS_URL)
    message = {"headers": {"id": task_id_for(8)}, "body": ""}
    tag = f"tag-other-{queue_name}"
    client.hset("unacked", tag, json.dumps([message, "", queue_name + "-other-lab"]))
    try:
        assert 8 not in broker_job_ids(settings=settings)
    finally:
        client.hdel("unacked", tag)


def test_task_ids_carry_the_job_id() -> None:
    assert job_id_of(task_id_for(123)) == 123
    assert job_id_of("some-other-task") is None
    assert task_id_for(1) != task_id_for(1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_broker_fails_fast_without_raising(tmp_path) -> None:
    settings = ApiSettings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{_closed_port()}/0")
    start = time.monotonic()
    assert not enqueue_job(1, settings=settings)
    assert not broker_reachable(settings=settings)
    assert broker_job_ids(settings=settings) is None
    assert time.monotonic() - start < 10
    assert broker_reachable(settings=ApiSettings(data_dir=tmp_path, broker_url=REDIS_URL))

"""Idempotency keys for the submitting routes (``POST /experiments``, ``/jobs``, ``/soups``).

A client sends ``Idempotency-Key: <any 1-200 visible ASCII characters>``; a retry with the
same key and the same (validated) request answers what the first request created, the same
ids, and creates nothing. The same key with a different request is a 422 naming the header.

The key row is written in the submission's own transaction (`stage`, called by
`backend.submit` just before its commit), so a connection that broke after the commit leaves
the key behind and a connection that broke before leaves neither. Two concurrent requests with
one key: the second commit fails on the unique (route, key) constraint, is rolled back, and
the route answers the first one's result (`replayed` again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Header
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db.models import IdempotencyKey

T = TypeVar("T")
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # response header on an answer replayed for a known key
_PENDING = "pft.idempotency"  # Session.info key: the key `stage` writes with the rows

KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=200,
        pattern=r"^[!-~]+$",
        description="makes the submission safe to retry: a retry with the same key and body "
        "answers the first result (same ids) and creates nothing",
    ),
]


class KeyReused(ValueError):
    """The key was used before, on this route, with a different request."""


@dataclass(frozen=True)
class Replay:
    """What the first request with this key created."""

    experiment_id: int | None
    job_ids: list[int]


def _fingerprint(request: BaseModel) -> str:
    body = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def begin(session: Session, *, route: str, key: str | None, request: BaseModel) -> Replay | None:
    """The earlier result for ``key`` (None: a first request, or no key); arms `stage`.

    Raises `KeyReused` when the key was used with a different request on this route.
    """
    session.info.pop(_PENDING, None)
    if key is None:
        return None
    digest = _fingerprint(request)
    row = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.route == route, IdempotencyKey.key == key)
    ).one_or_none()
    if row is None:
        session.info[_PENDING] = (route, key, digest)
        return None
    if row.request_sha256 != digest:
        raise KeyReused(
            f"this {HEADER} was already used with a different request on {route}; "
            "send a new key for a new request (a retry must repeat the same body)"
        )
    return Replay(experiment_id=row.experiment_id, job_ids=[int(i) for i in row.job_ids])


def stage(session: Session, *, job_ids: list[int], experiment_id: int | None = None) -> None:
    """Adds the armed key (if any) to the session's transaction, naming what it created."""
    pending = session.info.pop(_PENDING, None)
    if pending is None:
        return
    route, key, digest = pending
    session.add(
        IdempotencyKey(
            route=route,
            key=key,
            request_sha256=digest,
            experiment_id=experiment_id,
            job_ids=list(job_ids),
        )
    )


def submit_once(
    session: Session,
    *,
    route: str,
    key: str | None,
    request: BaseModel,
    submit: Callable[[], T],
) -> tuple[T | None, Replay | None]:
    """Runs ``submit`` unless ``key`` was seen: ``(result, None)`` or ``(None, replay)``.

    A concurrent first request with the same key that committed first makes this one's
    commit fail on the unique key; its rows are rolled back and the first one's are replayed.
    """
    replay = begin(session, route=route, key=key, request=request)
    if replay is not None:
        return None, replay
    try:
        return submit(), None
    except IntegrityError:
        session.rollback()
        session.info.pop(_PENDING, None)
        if key is None:
            raise
        replay = begin(session, route=route, key=key, request=request)
        session.info.pop(_PENDING, None)
        if replay is None:
            raise
        return None, replay

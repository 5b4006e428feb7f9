"""The reconciler against a real database and the real Redis broker."""

from __future__ import annotations

import time

import redis
from sqlalchemy.orm import Session

from backend import claims, crud
from backend.core.config import ApiSettings
from backend.db.session import get_engine, make_sessionmaker
from backend.enqueue import broker_job_ids, enqueue_job
from backend.reconciler import Reconciler, reconcile
from tests.utils.factories import queued_finetune

from .conftest import REDIS_URL


def _settings(settings: ApiSettings, **kw) -> ApiSettings:
    return settings.model_copy(update=kw)


def test_queued_jobs_unknown_to_the_broker_are_enqueued_once(
    session: Session, settings: ApiSettings
) -> None:
    lost = queued_finetune(session)
    held = queued_finetune(session)
    assert enqueue_job(held.id, settings=settings)
    report = reconcile(session, settings=settings)
    assert report.enqueued == [lost.id]
    assert broker_job_ids(settings=settings) == {lost.id, held.id}
    assert reconcile(session, settings=settings).enqueued == []
    assert redis.Redis.from_url(REDIS_URL).llen(settings.queue) == 2


def test_recently_enqueued_jobs_get_a_grace_period(session: Session, settings: ApiSettings) -> None:
    job = queued_finetune(session)
    crud.mark_enqueued(session, job_ids=[job.id])  # sent, but the message is "in flight"
    assert reconcile(session, settings=_settings(settings, enqueue_grace_s=60)).enqueued == []
    assert reconcile(session, settings=settings).enqueued == [job.id]


def test_stale_running_jobs_are_requeued_then_failed(
    session: Session, settings: ApiSettings
) -> None:
    job = queued_finetune(session)
    quick = _settings(settings, heartbeat_stale_s=0.3, max_attempts=2)
    for attempt in (1, 2):
        claim = claims.claim_job(session, job_id=job.id, worker=f"w{attempt}", stale_after_s=60)
        assert claim is not None
        time.sleep(0.5)
        report = reconcile(session, settings=quick)
        session.refresh(job)
        if attempt == 1:
            assert report.requeued == [job.id] and report.enqueued == [job.id]
            assert job.status == "queued"
        else:
            assert report.failed == [job.id]
            assert job.status == "failed" and "2 attempts" in job.error
    assert broker_job_ids(settings=settings) == {job.id}


def test_running_jobs_with_fresh_heartbeats_are_left_alone(
    session: Session, settings: ApiSettings
) -> None:
    job = queued_finetune(session)
    assert claims.claim_job(session, job_id=job.id, worker="w", stale_after_s=60) is not None
    report = reconcile(session, settings=settings)
    assert report.requeued == report.failed == report.enqueued == []


def test_background_thread_reconciles_periodically(session: Session, settings: ApiSettings) -> None:
    job = queued_finetune(session)
    thread = Reconciler(
        make_sessionmaker(get_engine(settings.db_url)),
        _settings(settings, reconcile_interval_s=0.1),
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and job.id not in (
            broker_job_ids(settings=settings) or ()
        ):
            time.sleep(0.05)
    finally:
        thread.stop()
    assert broker_job_ids(settings=settings) == {job.id}
    assert not thread.is_alive()


def test_after_a_start_the_thread_gives_workers_one_staleness_window(
    session: Session, settings: ApiSettings
) -> None:
    """A job that looks stale when the API starts (the API was down, so no worker could report)
    stays running while the thread's passes run within the first staleness window."""
    stale = queued_finetune(session)
    assert claims.claim_job(session, job_id=stale.id, worker="w", stale_after_s=60) is not None
    time.sleep(0.3)
    quick = _settings(settings, heartbeat_stale_s=0.2)
    assert reconcile(session, settings=quick, release_stale=False).requeued == []
    lost = queued_finetune(session)  # never enqueued: a pass of the thread sends it
    thread = Reconciler(
        make_sessionmaker(get_engine(settings.db_url)),
        _settings(quick, reconcile_interval_s=0.05, heartbeat_stale_s=3600),
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and lost.id not in (
            broker_job_ids(settings=settings) or ()
        ):
            time.sleep(0.05)
    finally:
        thread.stop()
    assert lost.id in broker_job_ids(settings=settings)  # the thread did reconcile
    session.refresh(stale)
    assert stale.status == "running"  # but released nothing inside the window
    assert reconcile(session, settings=quick).requeued == [stale.id]  # past it: released

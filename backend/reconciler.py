"""Keeps the database and the broker in agreement (the database is the source of truth).

`reconcile` does one pass:

1. running jobs whose heartbeat is older than ``PFT_HEARTBEAT_STALE_S`` lost their worker:
   they go back to queued (their claim cleared, so the lost worker's reports are refused)
   and are re-enqueued, or fail once they were claimed
   ``PFT_MAX_ATTEMPTS`` times (cancelled, if a cancel was pending);
2. queued jobs the broker does not hold (lost messages, a broker restart, a send that failed)
   are enqueued again. Jobs enqueued less than ``PFT_ENQUEUE_GRACE_S`` ago are left alone.

Step 1 waits for one staleness window after the API starts: while the API was down no worker
could report, so every running job looks stale at start although its worker is fine and is
retrying its reports; each gets ``PFT_HEARTBEAT_STALE_S`` to reach the API again.

Where it runs: the API process starts `Reconciler`, a daemon thread calling `reconcile` every
``PFT_RECONCILE_INTERVAL_S`` seconds (0 disables it). Several concurrent reconcilers (several
API processes) are safe: state changes are conditional updates, and a job enqueued twice runs
once (the claim is atomic).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from backend import crud
from backend.core.config import ApiSettings
from backend.db.file_guard import DatabaseFileGuard
from backend.enqueue import broker_job_ids, enqueue_job

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    requeued: list[int] = field(default_factory=list)  # stale running -> queued
    failed: list[int] = field(default_factory=list)  # stale running, out of attempts
    cancelled: list[int] = field(default_factory=list)  # stale running with a pending cancel
    enqueued: list[int] = field(default_factory=list)  # sent to the broker in this pass


def reconcile(
    session: Session, *, settings: ApiSettings, release_stale: bool = True
) -> ReconcileReport:
    """One reconciliation pass (see the module docstring); ``release_stale=False`` skips step 1."""
    report = ReconcileReport()
    if release_stale:
        report.requeued, report.failed, report.cancelled = crud.release_stale_jobs(
            session, stale_after_s=settings.heartbeat_stale_s, max_attempts=settings.max_attempts
        )
    candidates = crud.queued_job_ids(session, enqueued_before_s=settings.enqueue_grace_s)
    if candidates:
        held = broker_job_ids(settings=settings)
        # Unknown broker contents (not Redis / unreadable): re-send after the grace period;
        # a duplicate message is harmless because claims are atomic.
        missing = [j for j in candidates if held is None or j not in held]
        for job_id in missing:
            if not enqueue_job(job_id, settings=settings):
                break
            report.enqueued.append(job_id)
        crud.mark_enqueued(session, job_ids=report.enqueued)
    if report.requeued or report.failed or report.cancelled or report.enqueued:
        log.info("reconciler: %s", report)
    return report


class Reconciler(threading.Thread):
    """A daemon thread that reconciles every ``settings.reconcile_interval_s`` seconds."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: ApiSettings,
        database_file: DatabaseFileGuard | None = None,
    ) -> None:
        super().__init__(name="pft-reconciler", daemon=True)
        self._sessions = sessions
        self._settings = settings
        self._database_file = database_file
        self._stop_event = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self._stop_event.wait(self._settings.reconcile_interval_s):
            if self._database_file is not None and self._database_file.problem():
                continue  # writes would land in a file that is gone (`DatabaseFileGuard`)
            # Workers get one staleness window after the API starts to report again.
            release = time.monotonic() - started >= self._settings.heartbeat_stale_s
            try:
                with self._sessions() as session:
                    reconcile(session, settings=self._settings, release_stale=release)
            except Exception:  # keep the thread alive through a database outage
                log.exception("reconciler pass failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self.join(timeout)

"""One running job's reports to the API: the callbacks of `pft.jobs.runner.run`.

The engine's thread never waits on the network: callbacks only record, and a daemon thread sends
every heartbeat interval (at once after an epoch) the buffered epochs in order, then a heartbeat
with the latest progress (its reply carries the cancel flag). While the API is away the reports
wait and the job runs on; after a 409 nothing more is sent and the next callback raises JobLost.
Mid-epoch checkpoints every ``checkpoint_every_s`` (`pft.jobs.stopping.CheckpointTimer`); once
``stopping`` is set (SIGTERM), ``should_cancel()`` is true: the engine saves and stops.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import httpx

from contract import api
from pft.jobs.stopping import CheckpointTimer
from worker.api_client import ApiUnreachable, ClaimLost, WorkerApi

log = logging.getLogger(__name__)


class JobLost(Exception):
    """This worker no longer owns the job; stop quietly."""


class Reporter:
    """The callbacks of one attempt; a context manager around the sending thread."""

    def __init__(
        self,
        client: WorkerApi,
        claim: api.Claim,
        interval_s: float,
        info: dict[str, Any],
        checkpoint_every_s: float = 0.0,
    ) -> None:
        self.client, self.claim, self.interval_s = client, claim, interval_s
        self.after_save = lambda: None  # after each checkpoint, e.g. push it to a remote store
        self.timer = CheckpointTimer(checkpoint_every_s)  # mid-epoch saves (0: none)
        self.stopping = threading.Event()  # the worker is stopping: save and give the job back
        self.epochs: dict[int, api.EpochRecord] = {}  # this attempt's; the finish resends them
        self._pending: deque[api.EpochRecord] = deque()
        self._progress: float | None = None
        self._info = info
        self.cancelled, self.lost = threading.Event(), threading.Event()  # a user's cancel
        self.checkpoint_due = self.timer.due
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pft-reporter")

    def __enter__(self) -> Reporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._send()
            except ClaimLost as exc:
                log.warning("job %s: claim lost (%s); stopping", self.claim.job_id, exc)
                self.lost.set()
                return
            except (ApiUnreachable, httpx.HTTPStatusError) as exc:  # the job runs on regardless
                log.warning("job %s: reports wait for the API: %s", self.claim.job_id, exc)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _send(self) -> None:
        job_id, claim = self.claim.job_id, self.claim.claim
        while self._pending:
            try:
                self.client.epoch(job_id, api.EpochReport(claim=claim, **dict(self._pending[0])))
            except httpx.HTTPStatusError as exc:  # refused as invalid: resending cannot help
                log.error("job %s: an epoch report was refused: %s", job_id, exc)
            self._pending.popleft()
        beat = api.HeartbeatReport(claim=claim, progress=self._progress, info=self._info)
        if self.client.heartbeat(job_id, beat).cancel_requested:
            self.cancelled.set()

    # -- the runner's callbacks ------------------------------------------------------------
    def on_progress(self, info: dict[str, Any]) -> None:
        # Replaced, never changed in place: the sending thread reads them without a lock.
        self._progress = min(max(float(info.get("progress", self._progress or 0)), 0.0), 1.0)
        self._info = self._info | info

    def on_epoch(self, epoch: int, metrics: dict[str, Any], angles: list[dict[str, Any]]) -> None:
        self.check_owned()
        self.epochs[epoch] = api.EpochRecord(epoch=epoch, metrics=metrics, angles=angles)
        self._pending.append(self.epochs[epoch])
        self._info = self._info | {"epoch": epoch, "epochs_done": epoch}
        self.after_save()
        self.timer.saved()
        self._wake.set()

    def should_cancel(self) -> bool:
        self.check_owned()
        return self.cancelled.is_set() or self.stopping.is_set()

    def on_checkpoint(self, epoch: int, step: int) -> None:
        self.check_owned()
        self.timer.saved()
        self.after_save()

    def check_owned(self) -> None:
        if self.lost.is_set():
            raise JobLost(f"job {self.claim.job_id} was taken over by another worker")

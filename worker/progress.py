"""Engine callbacks that report a running job to the database: progress, heartbeat, results.

`JobReporter` is the ``callbacks`` object handed to `pft.engine` (docs/CONTRACTS.md). The
training loop only touches memory: ``on_progress`` stores the latest numbers and
``should_cancel`` reads a flag. A daemon thread does the database work every
``PFT_HEARTBEAT_INTERVAL_S`` seconds: it writes the heartbeat with the latest progress (so the
write rate does not depend on the step rate) and reads the job's cancel flag. A heartbeat that
no longer matches (the reconciler gave the job to another worker after a stall) marks the job
*lost*: the next ``should_cancel`` raises `JobLost` and this worker stops without saving or
writing anything more. Per-epoch metrics and angles are upserts keyed by (job, epoch), so an
epoch replayed after a crash overwrites its rows instead of duplicating them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from backend import crud
from backend.db.session import session_scope

log = logging.getLogger(__name__)


class JobLost(Exception):
    """This worker no longer owns the job (another worker took it over); stop quietly."""


class JobReporter:
    """Callbacks for `pft.engine` that write one job's progress to the database."""

    def __init__(
        self,
        *,
        db_url: str,
        job_id: int,
        worker: str,
        interval_s: float,
        base_info: dict[str, Any] | None = None,
        after_epoch: Callable[[int], None] | None = None,
    ) -> None:
        self.db_url = db_url
        self.job_id = job_id
        self.worker = worker
        self.interval_s = interval_s
        self.after_epoch = after_epoch  # e.g. push the checkpoint to a remote artifact store
        self._lock = threading.Lock()
        self._progress = 0.0
        self._info: dict[str, Any] = dict(base_info or {})
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the heartbeat thread ---------------------------------------------------------------
    def start(self) -> JobReporter:
        self.beat()
        self._thread = threading.Thread(
            target=self._run, name=f"pft-heartbeat-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the thread after one last beat, so the job row shows the final progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if not self._lost.is_set():
            try:
                self.beat()
            except Exception:
                log.exception("job %s: final heartbeat failed", self.job_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a database blip: try again next beat, the job keeps running
                log.exception("job %s: heartbeat failed", self.job_id)

    def beat(self) -> None:
        """Writes heartbeat + latest progress and reads the cancel flag (one round trip each)."""
        with self._lock:
            progress, info = self._progress, dict(self._info)
        with session_scope(self.db_url) as s:
            owned = crud.heartbeat(
                s, job_id=self.job_id, worker=self.worker, progress=progress, info=info
            )
            if not owned:
                if not self._lost.is_set():
                    log.warning("job %s: no longer owned by %s; stopping", self.job_id, self.worker)
                self._lost.set()
                return
            if crud.is_cancel_requested(s, job_id=self.job_id):
                self._cancel.set()

    # -- engine callbacks -------------------------------------------------------------------
    def on_progress(self, info: dict[str, Any]) -> None:
        with self._lock:
            self._progress = float(info.get("progress", self._progress))
            self._info.update(
                {
                    k: info[k]
                    for k in ("epoch", "step", "total_steps", "images_per_sec")
                    if k in info
                }
            )
            self._info["updated"] = time.time()

    def on_epoch(self, epoch: int, metrics: dict[str, Any], angles: dict[str, Any]) -> None:
        self.check_owned()
        with session_scope(self.db_url) as s:
            crud.record_epoch(s, job_id=self.job_id, epoch=epoch, metrics=metrics)
            if angles:
                crud.record_angles(s, job_id=self.job_id, epoch=epoch, angles=clean_angles(angles))
        with self._lock:
            self._info["epoch"] = epoch
            self._info["epochs_done"] = epoch
        if self.after_epoch is not None:
            self.after_epoch(epoch)

    def should_cancel(self) -> bool:
        self.check_owned()
        return self._cancel.is_set()

    # -- helpers for job code ---------------------------------------------------------------
    def set_progress(self, progress: float, **info: Any) -> None:
        """Progress reported by job code outside the engine (soups)."""
        with self._lock:
            self._progress = min(max(float(progress), 0.0), 1.0)
            self._info.update(info)

    def set_info(self, **info: Any) -> None:
        """Extra fields for the job's progress info (shown by the dashboard)."""
        with self._lock:
            self._info.update(info)

    def check_owned(self) -> None:
        if self._lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over by another worker")

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()


def clean_angles(angles: dict[str, Any]) -> dict[str, Any]:
    """Drops undefined angles (a tensor whose pre-trained norm is zero has none)."""
    out: dict[str, Any] = {}
    for key in ("units", "tensors"):
        entries = angles.get(key) or {}
        if isinstance(entries, dict):
            out[key] = {n: d for n, d in entries.items() if d is not None}
        else:
            out[key] = [e for e in entries if e.get("angle_deg") is not None]
    return out

"""The worker's client of the API's worker routes (worker token; payloads from `contract.api`).

The API is the database's only writer. Every report carries the claim, and a 409 (the API gave
the job to another worker, or it ended) raises `ClaimLost`. While the API is unreachable (no
connection, a timeout, a 5xx) a call is retried with exponential backoff until its deadline.
"""

from __future__ import annotations

import logging
import time

import httpx
from pydantic import BaseModel

from contract import api
from contract.settings import read_secret
from contract.vocab import API_PREFIX, WORKER_ROUTES
from worker.config import WorkerSettings

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per heartbeat in the log


class ClaimLost(Exception):
    """The API refused a report: this worker no longer owns the job."""


class ApiUnreachable(Exception):
    """No answer from the API (or only 5xx) before the call's deadline."""


class WorkerRefused(Exception):
    """The API refused the worker token (PFT_WORKER_TOKEN, else the data folder's worker_token)."""


class WorkerApi(httpx.Client):
    """One worker's client of ``/api/v1/worker`` (thread-safe: one connection pool)."""

    def __init__(self, settings: WorkerSettings) -> None:
        token = read_secret(settings.worker_token, settings.layout.worker_token)
        url = settings.resolved_api_url + API_PREFIX + WORKER_ROUTES
        auth = {"Authorization": f"Bearer {token}"}
        super().__init__(base_url=url, headers=auth, timeout=settings.report_timeout_s)
        self._backoff_max_s = settings.heartbeat_interval_s  # retry at least once a beat

    def _call(self, method: str, path: str, body: BaseModel, retry_s: float = 0) -> httpx.Response:
        """Sends ``body``; retries transport errors and 5xx until ``retry_s`` have passed."""
        deadline, delay = time.monotonic() + retry_s, 0.2
        while True:
            try:
                r = self.request(method, path, json=body.model_dump(mode="json"))
                if r.status_code < 500:
                    break
                problem = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > deadline:
                raise ApiUnreachable(f"{method} {path}: {problem}")
            log.info("%s %s: %s; retrying in %.1f s", method, path, problem, delay)
            time.sleep(delay)
            delay = min(2 * delay, self._backoff_max_s)
        if r.status_code in (404, 409):  # the job is gone, or owned by another claim
            raise ClaimLost(r.text[:300])
        if r.status_code in (401, 403):
            raise WorkerRefused(f"HTTP {r.status_code}: set PFT_WORKER_TOKEN to the API's token")
        return r.raise_for_status()  # 422: not retried

    def claim(self, job_id: int, worker: str, *, retry_s: float = 0) -> api.Claim | None:
        """The job for this worker; None when it is not claimable (409) or unknown (404)."""
        body = api.ClaimRequest(worker=worker)
        try:
            r = self._call("POST", f"/jobs/{job_id}/claim", body, retry_s)
        except ClaimLost as exc:
            log.info("job %s not claimed by %s: %s", job_id, worker, exc)
            return None
        return api.Claim.model_validate(r.json())

    def heartbeat(self, job_id: int, report: api.HeartbeatReport) -> api.HeartbeatReply:
        r = self._call("POST", f"/jobs/{job_id}/heartbeat", report)
        return api.HeartbeatReply.model_validate(r.json())

    def epoch(self, job_id: int, report: api.EpochReport) -> None:
        self._call("PUT", f"/jobs/{job_id}/epochs/{report.epoch}", report)

    def finish(self, job_id: int, report: api.FinishReport, *, retry_s: float = 0) -> None:
        """Idempotent on the API's side, so a retry after a lost answer is safe."""
        self._call("POST", f"/jobs/{job_id}/finish", report, retry_s)

    def release(self, job_id: int, report: api.ReleaseReport, *, retry_s: float = 0) -> None:
        """Gives the job back to the queue (this worker is stopping)."""
        self._call("POST", f"/jobs/{job_id}/release", report, retry_s)

    def killed(self, job_id: int, report: api.KillReport, *, retry_s: float = 0) -> None:
        """Fails a job whose process the kernel killed for memory (`end_killed_job`)."""
        self._call("POST", f"/jobs/{job_id}/killed", report, retry_s)

    def shape_table(self, report: api.ShapeTableReport) -> None:
        self._call("PUT", "/shape-tables", report)

"""What a worker does with one job id: claim it through the API, run its spec, report the end.

The API refuses the claim of a job that is finished or running elsewhere with a fresh heartbeat,
so a duplicate delivery never runs a job twice; a job taken over from a dead worker resumes from
its last checkpoint, in an attempt folder of its own (`pft.store`): a worker that lost its claim
overwrites nothing. A failure ends the job, never the worker. On SIGTERM the job's state is
saved mid-epoch and the job given back (``release``); ``PFT_CHECKPOINT_EVERY_S`` bounds what a
kill -9 loses, and a kill for memory fails the job at once (`end_killed_job`).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict

from contract import api
from contract.vocab import JobStatus
from pft.errors import PftError
from pft.jobs.devices import require_device, resolve_device, set_torch_threads
from pft.jobs.memory_kills import claim_note, memory_kill
from pft.jobs.runner import describe_failure, run
from pft.jobs.specs import FinetuneSpec, spec_from_dict
from pft.jobs.stopping import stop_on_signal
from pft.model_catalog import get_spec, shape_key, shape_table
from pft.store import ArtifactStore
from pft.training import Cancelled
from worker.api_client import ApiUnreachable, ClaimLost, WorkerApi, WorkerRefused
from worker.config import WorkerSettings, get_settings
from worker.reporter import JobLost, Reporter

log = logging.getLogger(__name__)

# How long a stopping (or killed) worker's end is retried; then the reconciler re-queues the job.
RELEASE_RETRY_S = 5.0


def run_job(
    job_id: int, *, settings: WorkerSettings | None = None, worker: str | None = None
) -> str:
    """Runs job ``job_id`` if the API hands it to this worker; the outcome: succeeded, failed,
    cancelled, skipped (not ours) or lost (another worker owns it, or the API took no end)."""
    settings = settings or get_settings()
    device = resolve_device(settings.device, _pool_index())
    worker = worker or f"{socket.gethostname()}:{os.getpid()} ({device})"
    with WorkerApi(settings) as client:
        try:
            if (claim := client.claim(job_id, worker, retry_s=settings.report_retry_s)) is None:
                return "skipped"
            threads = set_torch_threads(settings.torch_threads)
            log.info(
                "job %s (%s) claimed by %s, attempt %s, %s torch threads",
                *(job_id, claim.kind, worker, claim.attempt, threads),
            )
            store = ArtifactStore(settings.resolved_artifact_url, settings.layout.artifact_cache)
            with claim_note(settings.layout.claim_notes, claim):
                end = _attempt(client, claim, settings, device, store)
            if end is None:
                return "lost"
            if isinstance(end, api.ReleaseReport):
                client.release(job_id, end, retry_s=min(settings.report_retry_s, RELEASE_RETRY_S))
                log.info("job %s given back to the queue: %s", job_id, end.reason)
                return "released"
            client.finish(job_id, end, retry_s=settings.report_retry_s)
            if end.status == JobStatus.SUCCEEDED:  # the API took it: other attempts are moot
                store.prune(job_id, keep=[a.location for a in end.artifacts], origin=claim.origin)
        except (ClaimLost, ApiUnreachable) as exc:
            log.warning("job %s: the API did not take the report: %s", job_id, exc)
            return "lost"
        except WorkerRefused as exc:  # the job stays queued; the reconciler sends it again
            log.error("job %s: %s", job_id, exc)
            return "refused"
    log.info("job %s %s%s", job_id, end.status, f": {end.error}" if end.error else "")
    return end.status


def end_killed_job(job_id: int) -> None:
    """In the worker's parent, once the pool process running ``job_id`` died by SIGKILL: fails
    the job with "out of memory" if the kernel killed for memory (`pft.jobs.memory_kills`)."""
    if (found := memory_kill(get_settings().layout.claim_notes, job_id)) is not None:
        with WorkerApi(get_settings()) as client:
            try:
                client.killed(job_id, api.KillReport(**found), retry_s=RELEASE_RETRY_S)
            except (ClaimLost, ApiUnreachable, WorkerRefused) as exc:
                log.warning("job %s: the API did not take the report: %s", job_id, exc)


def _attempt(
    client: WorkerApi, claim: api.Claim, settings: WorkerSettings, device: str, store: ArtifactStore
) -> api.FinishReport | api.ReleaseReport | None:
    """Runs the claimed spec in an attempt folder of its own; the end to report, the job to give
    back (this worker is stopping), or None once another worker owns the job."""
    job_id, spec, n = claim.job_id, None, 0
    beat, every = settings.heartbeat_interval_s, settings.checkpoint_every_s
    reporter = Reporter(client, claim, beat, {"device": device, "attempt": claim.attempt}, every)
    with reporter, stop_on_signal(reporter.stopping.set):
        reporter.after_save = lambda: store.push(job_id, n)  # to a remote store at once
        try:
            n = store.new_attempt(job_id, claim.origin)  # this claim's own folder (pft.store)
            require_device(device)
            spec = spec_from_dict(claim.kind, claim.spec)
            inputs = {  # a soup's ingredients, checked against their recorded sha256
                int(i): store.fetch_verified(r.location, r.sha256, f"checkpoint of job {i}")
                for i, r in claim.inputs.items()
            }
            result = run(spec, store.pull(job_id, n), reporter, device=device, inputs=inputs)
            reporter.check_owned()
            store.push(job_id, n)
            if isinstance(spec, FinetuneSpec):
                _share_shape_table(client, spec)
            return api.FinishReport(
                claim=claim.claim,
                status=JobStatus.SUCCEEDED,
                result=result.summary,
                epochs=result.epoch_records(),  # also those whose report a crash lost
                angles=result.angles,
                artifacts=[
                    api.ArtifactReport(kind=kind, **asdict(store.describe(job_id, rel, n)))
                    for kind, rel in result.artifacts.items()
                ],
                soup=result.soup,
            )
        except JobLost:
            return None
        except Cancelled as exc:
            store.push(job_id, n)  # the saved state: a retry resumes from it
            stopped = reporter.stopping.is_set() and not reporter.cancelled.is_set()
            status = JobStatus.QUEUED if stopped else JobStatus.CANCELLED  # queued: given back
            error = f"worker stopped (SIGTERM); state saved: {exc}" if stopped else None
        except Exception as exc:  # every failure ends the job, never the worker
            if not isinstance(exc, PftError):
                log.exception("job %s failed", job_id)
            status, error = JobStatus.FAILED, describe_failure(exc, spec, device)
    epochs = [reporter.epochs[e] for e in sorted(reporter.epochs)]
    if status == JobStatus.QUEUED:
        end = api.ReleaseReport(claim=claim.claim, reason=error, epochs=epochs)
    else:
        end = api.FinishReport(claim=claim.claim, status=status, error=error, epochs=epochs)
    return None if reporter.lost.is_set() else end


def _share_shape_table(client: WorkerApi, spec: FinetuneSpec) -> None:
    """Gives the API (no torch) the shape table of a model whose unit map it cannot compute."""
    try:
        if (table := shape_table(model := get_spec(spec.model, spec.model_overrides))) is not None:
            key, name = shape_key(model), spec.model
            client.shape_table(api.ShapeTableReport(key=key, model=name, table=table))
    except Exception:  # the job's result does not depend on it
        log.exception("could not share the shape table of %s", spec.model)


def _pool_index() -> int:
    """This pool process's index (0, 1, ...): which GPU plain ``PFT_DEVICE=cuda`` uses."""
    from billiard.process import current_process

    return int(getattr(current_process(), "index", 0) or 0)

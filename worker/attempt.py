"""What a worker does with one job id: claim it through the API, run its spec, report the end.

The API refuses the claim of a job that is finished or running elsewhere with a fresh heartbeat,
so a duplicate delivery never runs a job twice; a job taken over from a dead worker resumes from
its last checkpoint (``<store>/jobs/<id>/``). A failure ends the job, never the worker.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict
from pathlib import Path

import torch

from contract import api
from contract.vocab import JobStatus
from pft.errors import PftError
from pft.jobs.runner import describe_failure, run
from pft.jobs.specs import FinetuneSpec, spec_from_dict
from pft.model_catalog import get_spec, shape_key, shape_table
from pft.store import ArtifactStore, sha256_file
from pft.training import Cancelled
from worker.api_client import ApiUnreachable, ClaimLost, WorkerApi, WorkerRefused
from worker.config import WorkerSettings, get_settings
from worker.reporter import JobLost, Reporter

log = logging.getLogger(__name__)


def run_job(
    job_id: int, *, settings: WorkerSettings | None = None, worker: str | None = None
) -> str:
    """Runs job ``job_id`` if the API hands it to this worker; the outcome: succeeded, failed,
    cancelled, skipped (not ours) or lost (another worker owns it, or the API took no end)."""
    settings = settings or get_settings()
    device = resolve_device(settings.device)
    worker = worker or f"{socket.gethostname()}:{os.getpid()} ({device})"
    with WorkerApi(settings) as client:
        try:
            if (claim := client.claim(job_id, worker, retry_s=settings.report_retry_s)) is None:
                return "skipped"
            # Torch's threads: the CPUs this process may run on (a job gains little past 32).
            threads = settings.torch_threads or min(len(os.sched_getaffinity(0)), 32)
            torch.set_num_threads(threads)
            log.info(
                "job %s (%s) claimed by %s, attempt %s, %s torch threads",
                *(job_id, claim.kind, worker, claim.attempt, threads),
            )
            if (end := _attempt(client, claim, settings, device)) is None:
                return "lost"
            client.finish(job_id, end, retry_s=settings.report_retry_s)
        except (ClaimLost, ApiUnreachable) as exc:
            log.warning("job %s: the API did not take the report: %s", job_id, exc)
            return "lost"
        except WorkerRefused as exc:  # the job stays queued; the reconciler sends it again
            log.error("job %s: %s", job_id, exc)
            return "refused"
    log.info("job %s %s%s", job_id, end.status, f": {end.error}" if end.error else "")
    return end.status


def _attempt(
    client: WorkerApi, claim: api.Claim, settings: WorkerSettings, device: str
) -> api.FinishReport | None:
    """Runs the claimed spec; the end to report, or None once another worker owns the job."""
    store = ArtifactStore(settings.resolved_artifact_url, cache_dir=settings.layout.artifact_cache)
    job_id, spec = claim.job_id, None
    info = {"device": device, "attempt": claim.attempt}
    with Reporter(client, claim, settings.heartbeat_interval_s, info) as reporter:
        reporter.after_epoch = lambda _epoch: store.push(job_id)  # to a remote store at once
        try:
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise PftError(
                    f"PFT_DEVICE={device} but CUDA is not available on {socket.gethostname()}; "
                    "fix the worker's PFT_DEVICE and retry the job"
                )
            spec = spec_from_dict(claim.kind, claim.spec)
            inputs = _fetch_inputs(store, claim)
            result = run(spec, store.pull(job_id), reporter, device=device, inputs=inputs)
            reporter.check_owned()
            store.push(job_id)
            if isinstance(spec, FinetuneSpec):
                _share_shape_table(client, spec)
            return api.FinishReport(
                claim=claim.claim,
                status=JobStatus.SUCCEEDED,
                result=result.summary,
                epochs=[  # the whole run's: also epochs whose report a crash lost
                    api.EpochRecord(epoch=e, metrics=m, angles=result.trajectory.get(e, []))
                    for m in result.epochs
                    for e in [m["epoch"]]
                ],
                angles=result.angles,
                artifacts=[
                    api.ArtifactReport(kind=kind, **asdict(store.describe(job_id, rel)))
                    for kind, rel in result.artifacts.items()
                ],
                soup=result.soup,
            )
        except JobLost:
            return None
        except Cancelled:
            store.push(job_id)  # the saved state: a retry resumes from it
            status, error = JobStatus.CANCELLED, None
        except Exception as exc:  # every failure ends the job, never the worker
            if not isinstance(exc, PftError):
                log.exception("job %s failed", job_id)
            status, error = JobStatus.FAILED, describe_failure(exc, spec, device)
    epochs = [reporter.epochs[e] for e in sorted(reporter.epochs)]
    end = api.FinishReport(claim=claim.claim, status=status, error=error, epochs=epochs)
    return None if reporter.lost.is_set() else end


def _fetch_inputs(store: ArtifactStore, claim: api.Claim) -> dict[int, Path]:
    """A soup's ingredient checkpoints, local and checked against their recorded sha256."""
    paths: dict[int, Path] = {}
    for job_id, ref in claim.inputs.items():
        try:
            paths[int(job_id)] = store.fetch(ref.location)
            digest = sha256_file(paths[int(job_id)])
        except (OSError, ValueError) as exc:
            raise PftError(f"checkpoint of job {job_id} cannot be read: {exc}") from None
        if digest != ref.sha256:
            raise PftError(
                f"corrupt checkpoint of job {job_id} ({ref.location}): its sha256 does not "
                "match the one recorded when it was written; fine-tune it again"
            )
    return paths


def _share_shape_table(client: WorkerApi, spec: FinetuneSpec) -> None:
    """Gives the API (no torch) the shape table of a model whose unit map it cannot compute."""
    try:
        model = get_spec(spec.model, spec.model_overrides)
        if (table := shape_table(model)) is not None:
            key = shape_key(model)
            client.shape_table(api.ShapeTableReport(key=key, model=spec.model, table=table))
    except Exception:  # the job's result does not depend on it
        log.exception("could not share the shape table of %s", spec.model)


def resolve_device(setting: str | None) -> str:
    """``PFT_DEVICE`` made concrete; plain ``cuda`` spreads a pool's processes over the GPUs."""
    if (setting or "cuda") == "cuda" and torch.cuda.is_available():
        from billiard.process import current_process

        index = int(getattr(current_process(), "index", 0) or 0)
        return f"cuda:{index % torch.cuda.device_count()}"
    return setting or "cpu"

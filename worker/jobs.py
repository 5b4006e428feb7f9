"""What a worker does with one job id: claim it, run it with pft, write the results back.

Plain functions, no Celery: `run_job` is called by the thin task in `worker.tasks` and by tests.
The database is the source of truth. ``crud.claim_job`` is one conditional UPDATE, so a job is
run by exactly one worker even when its message is delivered twice; a job that is cancelled,
finished, or running elsewhere with a fresh heartbeat is skipped. A job picked up again after
its worker died resumes from the last epoch checkpoint in its folder of the artifact store
(``<store>/jobs/<id>/``). Every failure ends in a terminal status with a message a user can act
on (bad input, corrupt checkpoint, out of memory); the worker process carries on.

Kinds (docs/CONTRACTS.md "Jobs"): ``finetune`` (`pft.engine.finetune`), ``pretrain`` (the
built-in backbone, `pft.engine.pretrain`) and ``soup`` (uniform / greedy / masked soups of
succeeded fine-tuning jobs, evaluated on the test split and its shifts).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend import crud
from backend.db.session import session_scope
from pft.checkpoint import atomic_write
from pft.config import FinetuneConfig, Hparams
from pft.engine import Cancelled, finetune, pretrain
from pft.errors import PftError
from worker.artifacts import ArtifactStore, sha256_file
from worker.config import WorkerSettings, get_settings
from worker.progress import JobLost, JobReporter, clean_angles

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 2000


class JobFailed(Exception):
    """A failure whose message is meant for the user (it becomes the job's ``error``)."""


@dataclass
class JobContext:
    """Everything a kind-specific runner needs."""

    job_id: int
    config: dict[str, Any]
    attempt: int
    device: str
    worker: str
    settings: WorkerSettings
    store: ArtifactStore
    reporter: JobReporter

    @property
    def out_dir(self) -> Path:
        return self.store.job_dir(self.job_id)

    @property
    def db_url(self) -> str:
        return self.settings.db_url


# ------------------------------------------------------------------------------------------
# entry point


def run_job(
    job_id: int, *, settings: WorkerSettings | None = None, worker: str | None = None
) -> str:
    """Runs job ``job_id`` if this worker can claim it.

    Returns the outcome: ``succeeded``, ``failed``, ``cancelled``, ``skipped`` (not ours to run)
    or ``lost`` (another worker took the job over while this one stalled).
    """
    settings = settings or get_settings()
    try:
        device, device_error = resolve_device(settings.device), None
    except RuntimeError as exc:  # a misconfigured worker fails the job it took, loudly
        device, device_error = settings.device or "?", str(exc)
    worker = worker or worker_name(device)
    with session_scope(settings.db_url) as s:
        job = crud.claim_job(
            s, job_id=job_id, worker=worker, stale_after_s=settings.heartbeat_stale_s
        )
        if job is None:
            current = crud.get_job(s, job_id=job_id)
            state = "unknown" if current is None else current.status
            log.info("job %s not claimed by %s (it is %s); skipping", job_id, worker, state)
            return "skipped"
        kind, config, attempt = job.kind, dict(job.config or {}), job.attempts
    log.info("job %s (%s) claimed by %s, attempt %s", job_id, kind, worker, attempt)
    if device_error:
        log.error("job %s: %s", job_id, device_error)
        with session_scope(settings.db_url) as s:
            crud.finish_job(s, job_id=job_id, worker=worker, status="failed", error=device_error)
        return "failed"

    store = artifact_store(settings)
    reporter = JobReporter(
        db_url=settings.db_url,
        job_id=job_id,
        worker=worker,
        interval_s=settings.heartbeat_interval_s,
        base_info={"device": device, "attempt": attempt},
        after_epoch=lambda _epoch: store.push(job_id),
    )
    ctx = JobContext(job_id, config, attempt, device, worker, settings, store, reporter)
    status, result, error = "failed", None, None
    reporter.start()
    try:
        if kind not in RUNNERS:
            raise JobFailed(f"unknown job kind {kind!r}; accepted: {', '.join(RUNNERS)}")
        store.pull(job_id)
        result = RUNNERS[kind](ctx)
        status = "succeeded"
    except JobLost:
        return "lost"
    except Cancelled:
        if reporter.lost:
            return "lost"
        status, error = "cancelled", None
        _quietly(store.push, job_id)  # keep the saved state: a retry resumes from it
    except Exception as exc:  # every failure ends the job, never the worker
        error = describe_error(exc, ctx)
        if not isinstance(exc, JobFailed | PftError):
            log.exception("job %s failed", job_id)
    finally:
        reporter.stop()
    with session_scope(settings.db_url) as s:
        owned = crud.finish_job(
            s, job_id=job_id, worker=worker, status=status, result=result, error=error
        )
    if not owned:
        log.warning("job %s finished as %s but was no longer ours", job_id, status)
        return "lost"
    log.info("job %s %s%s", job_id, status, f": {error}" if error else "")
    return status


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("ignored error in %s", getattr(fn, "__name__", fn))


# ------------------------------------------------------------------------------------------
# environment


def resolve_device(setting: str | None) -> str:
    """``PFT_DEVICE`` made concrete; called inside the task only (CUDA after the fork).

    Plain ``cuda`` in a pool of several processes spreads them over the GPUs by process index.
    """
    if setting is None:
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"PFT_DEVICE={setting} but CUDA is not available on {socket.gethostname()}; "
                "fix the worker's PFT_DEVICE and retry the job"
            )
        if setting == "cuda":
            index = _pool_index() % max(1, torch.cuda.device_count())
            setting = f"cuda:{index}"
    return setting


def _pool_index() -> int:
    try:
        from billiard.process import current_process

        return int(getattr(current_process(), "index", 0) or 0)
    except Exception:
        return 0


def worker_name(device: str) -> str:
    """Unique per process: the ownership token in heartbeats and the name shown on the job."""
    return f"{socket.gethostname()}:{os.getpid()} ({device})"


def artifact_store(settings: WorkerSettings) -> ArtifactStore:
    return ArtifactStore(
        settings.resolved_artifact_url, cache_dir=settings.resolved_data_dir / "artifact-cache"
    )


# ------------------------------------------------------------------------------------------
# errors


def describe_error(exc: BaseException, ctx: JobContext) -> str:
    """A message for the job's ``error`` field: what went wrong and what to do."""
    if isinstance(exc, JobFailed | PftError):
        text = str(exc)
    elif _is_oom(exc):
        bs = ctx.config.get("hparams", {}).get("batch_size")
        hint = f" (now {bs})" if bs else ""
        text = (
            f"out of memory on {ctx.device}: lower hparams.batch_size{hint} or use a smaller "
            f"model ({type(exc).__name__}: {_first_line(exc)})"
        )
    elif isinstance(exc, FileNotFoundError):
        text = f"file not found: {exc.filename or _first_line(exc)}"
    elif _storage_problem(exc):
        text = (
            f"the artifact store cannot be written ({_storage_problem(exc)}): free space or fix "
            f"its permissions, then retry; the job resumes from its last epoch checkpoint "
            f"({type(exc).__name__}: {_first_line(exc)})"
        )
    else:
        text = f"internal error ({type(exc).__name__}): {_first_line(exc)}; see the worker log"
    return text[:MAX_ERROR_CHARS]


_STORAGE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


def _storage_problem(exc: BaseException) -> str | None:
    """Why a write failed, for full or unwritable stores (safetensors reports os errors as text)."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[exc.errno]
    text = str(exc)
    for code, reason in _STORAGE_ERRNOS.items():
        if f"os error {code})" in text or os.strerror(code) in text:
            return reason
    return None


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------
# checkpoints


def check_safetensors(path: Path) -> None:
    """Raises ValueError unless ``path`` is a complete safetensors file (header + data size).

    Reads only the header, so it is cheap even for multi-GB files; catches truncated and
    garbage files (bit flips inside tensor data are caught by the recorded sha256 instead).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise ValueError("header length is beyond the end of the file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"unreadable header ({exc})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"{size} bytes, expected {8 + n + end} (truncated or padded)")


def check_resume_state(out_dir: Path) -> None:
    """Validates the epoch checkpoint a previous attempt left in ``out_dir/state``.

    A corrupt one is moved to ``state.corrupt`` (so that a retry starts from scratch) and the
    job fails with a message that says so.
    """
    state = out_dir / "state"
    meta = state / "state.json"
    if not meta.is_file():
        return
    try:
        saved = json.loads(meta.read_text())
        tensors = state / str(saved["tensors"])
        if not tensors.is_file():
            raise ValueError(f"{tensors.name} is missing")
        check_safetensors(tensors)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        aside = out_dir / "state.corrupt"
        shutil.rmtree(aside, ignore_errors=True)
        state.rename(aside)
        raise JobFailed(
            f"corrupt checkpoint in {state}: {reason}; it was moved to {aside.name}/, "
            "retry the job to start it from scratch"
        ) from None


# ------------------------------------------------------------------------------------------
# kinds


def finetune_config(config: dict[str, Any], *, db_url: str) -> FinetuneConfig:
    """The job's stored config as a `FinetuneConfig` (angle_topk reads its reference's angles)."""
    strategy = dict(config.get("strategy") or {"name": "full"})
    name = strategy.pop("name", "full")
    reference = strategy.pop("reference_job", None)
    if name == "angle_topk" and "angles" not in strategy:
        if reference is None:
            raise JobFailed("strategy angle_topk needs reference_job: a succeeded full run")
        with session_scope(db_url) as s:
            angles = crud.final_unit_angles(s, job_id=int(reference))
        if not angles:
            raise JobFailed(
                f"reference_job {reference} has no final angles: it must be a succeeded "
                "fine-tuning job (full fine-tuning measures every unit)"
            )
        strategy["angles"] = angles
    try:
        return FinetuneConfig(
            model=config["model"],
            dataset=config["dataset"],
            strategy=name,
            strategy_params=strategy,
            hparams=Hparams.from_dict(config.get("hparams")),
            pretrained=bool(config.get("pretrained", True)),
            model_overrides=dict(config.get("model_overrides") or {}),
            shifts=list(config.get("shifts") or []),
        )
    except KeyError as exc:
        raise JobFailed(f"job config lacks {exc.args[0]!r}") from None


def run_finetune(ctx: JobContext) -> dict[str, Any]:
    cfg = finetune_config(ctx.config, db_url=ctx.db_url)
    out = ctx.out_dir
    check_resume_state(out)
    resumed = _checkpoint_epoch(out / "state")
    if resumed:
        log.info("job %s resumes after epoch %s", ctx.job_id, resumed)
        ctx.reporter.set_info(resumed_from_epoch=resumed)
    summary = finetune(cfg, out, device=ctx.device, callbacks=ctx.reporter)
    ctx.reporter.check_owned()
    angles = json.loads((out / "angles.json").read_text())
    with session_scope(ctx.db_url) as s:
        _fill_epochs(s, ctx.job_id, summary.get("epochs", []), angles.get("trajectory", []))
        crud.record_angles(s, job_id=ctx.job_id, angles=clean_angles(angles))  # final weights
    record_files(
        ctx, {"delta": "delta.safetensors", "metrics": "metrics.json", "angles": "angles.json"}
    )
    _store_shape_table(ctx, cfg)
    return {**summary, "resumed_from_epoch": resumed}


def _checkpoint_epoch(state: Path) -> int:
    """Completed epochs in a (validated) resumable state folder; 0 when there is none."""
    try:
        return int(json.loads((state / "state.json").read_text())["run"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _fill_epochs(s: Any, job_id: int, history: list[dict], trajectory: list[dict]) -> None:
    """Upserts every epoch of the run's history: fills an epoch whose checkpoint was saved but
    whose rows were not written before a crash. Rewriting existing epochs changes nothing."""
    for metrics in history:
        crud.record_epoch(s, job_id=job_id, epoch=int(metrics["epoch"]), metrics=metrics)
    have = {a.epoch for a in crud.get_angles(s, job_id=job_id)}
    for point in trajectory:
        if int(point["epoch"]) not in have:
            units = {k: v for k, v in point.get("units", {}).items() if v is not None}
            crud.record_angles(s, job_id=job_id, epoch=int(point["epoch"]), angles={"units": units})


def record_files(ctx: JobContext, files: dict[str, str]) -> None:
    ctx.store.push(ctx.job_id)
    with session_scope(ctx.db_url) as s:
        for kind, rel in files.items():
            info = ctx.store.describe(ctx.job_id, rel)
            crud.record_artifact(
                s,
                job_id=ctx.job_id,
                kind=kind,
                location=info.location,
                size_bytes=info.size_bytes,
                sha256=info.sha256,
            )


def _store_shape_table(ctx: JobContext, cfg: FinetuneConfig) -> None:
    """Shares the model's shape table with API hosts that cannot compute it (no torch)."""
    from pft.model_catalog import get_spec, shape_key, shape_table

    try:
        spec = get_spec(cfg.model, cfg.model_overrides)
        table = shape_table(spec)
        if table is not None:
            with session_scope(ctx.db_url) as s:
                crud.store_shape_table(s, key=shape_key(spec), model=cfg.model, table=table)
    except Exception:
        log.exception("job %s: could not store the shape table", ctx.job_id)


def run_pretrain(ctx: JobContext) -> dict[str, Any]:
    """Pre-trains the built-in backbone into the job folder, then installs it in the data folder."""
    from pft.model_catalog import BUILTIN_BACKBONE
    from pft.model_factory import builtin_weights_path

    epochs = ctx.config.get("epochs")
    subset = ctx.config.get("subset")
    out = ctx.out_dir
    check_resume_state(out / "run")
    info = pretrain(
        out / "model",
        ctx.reporter,
        epochs=int(epochs) if epochs else None,
        subset=int(subset) if subset else None,
        work_dir=out / "run",
        device=ctx.device,
    )
    ctx.reporter.check_owned()
    with session_scope(ctx.db_url) as s:
        for metrics in info.get("epochs", []):
            crud.record_epoch(s, job_id=ctx.job_id, epoch=int(metrics["epoch"]), metrics=metrics)
    target = builtin_weights_path(BUILTIN_BACKBONE)
    for name in ("model.safetensors", "model.json"):
        src = out / "model" / name
        atomic_write(target.parent / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    record_files(ctx, {"backbone": "model/model.safetensors", "metrics": "model/model.json"})
    return {**info, "installed": str(target)}


def run_soup(ctx: JobContext) -> dict[str, Any]:
    from worker.soup import make_soup

    return make_soup(ctx)


RUNNERS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "finetune": run_finetune,
    "pretrain": run_pretrain,
    "soup": run_soup,
}


def verified_delta(ctx: JobContext, ingredient_id: int) -> Path:
    """The local path of a succeeded job's delta checkpoint, checked against its sha256."""
    with session_scope(ctx.db_url) as s:
        job = crud.get_job(s, job_id=ingredient_id)
        if job is None:
            raise JobFailed(f"ingredient job {ingredient_id} does not exist")
        if job.kind != "finetune" or job.status != "succeeded":
            raise JobFailed(
                f"ingredient job {ingredient_id} is a {job.status} {job.kind} job; soups take "
                "succeeded fine-tuning jobs"
            )
        found = {a.kind: a for a in crud.get_artifacts(s, job_id=ingredient_id)}
    artifact = found.get("delta")
    if artifact is None:
        raise JobFailed(f"ingredient job {ingredient_id} has no delta checkpoint recorded")
    try:
        path = ctx.store.fetch(artifact.location)
        digest = sha256_file(path)
    except (OSError, ValueError) as exc:
        raise JobFailed(f"checkpoint of job {ingredient_id} cannot be read: {exc}") from None
    if digest != artifact.sha256:
        raise JobFailed(
            f"corrupt checkpoint of job {ingredient_id} ({artifact.location}): its sha256 does "
            "not match the one recorded when it was written; fine-tune it again"
        )
    return path

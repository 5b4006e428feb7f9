"""Where a job stands, in words (pure functions of `contract.api.JobPublic`): its status as a
person should read it, "epoch x of N", and the time left.

What a job carries: ``progress_info`` from its worker's heartbeats (``epoch``: the epoch being
trained, 1-based; ``epochs_done``: epochs finished; ``progress``: the fraction of training
steps done), ``config`` (its spec: ``hparams.epochs`` for fine-tuning, ``epochs`` for
pre-training) and ``started_at`` (when this attempt was claimed).
"""

from __future__ import annotations

from datetime import UTC, datetime

from contract.api import JobPublic
from contract.vocab import JobStatus

EMPTY = "—"  # what a cell without a value shows


def status_text(job: JobPublic) -> str:
    """The status, with a cancellation the worker has not acted on yet
    (``running · cancelling``)."""
    if job.cancel_requested and not job.status.terminal:
        return f"{job.status} · cancelling"
    return str(job.status)


def configured_epochs(job: JobPublic) -> int | None:
    """The epochs the job was configured to train (None: not known, e.g. a recipe's default)."""
    hparams = job.config.get("hparams")
    epochs = hparams.get("epochs") if isinstance(hparams, dict) else job.config.get("epochs")
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def epochs_done(job: JobPublic) -> int:
    """Epochs finished: the worker's count, all of them once the job succeeded."""
    total = configured_epochs(job)
    if job.status == JobStatus.SUCCEEDED and total:
        return total
    done = job.progress_info.get("epochs_done")
    return int(done) if isinstance(done, int | float) else 0


def epoch_text(job: JobPublic) -> str:
    """``epoch 2 of 3`` while it trains, ``3 of 3`` when done; ``""`` when no epoch started."""
    total = configured_epochs(job)
    if job.status == JobStatus.RUNNING:
        current = job.progress_info.get("epoch")
        if current is None:
            return ""
        return f"epoch {current} of {total}" if total else f"epoch {current}"
    done = epochs_done(job)
    if not done:
        return ""
    return f"{done} of {total}" if total else str(done)


def eta_seconds(job: JobPublic, now: datetime) -> float | None:
    """Seconds left for a running job: the time per epoch so far (this attempt's time over
    its epochs done) times the epochs left; before its first epoch ends, from the fraction of
    training steps done. None when there is nothing to extrapolate from."""
    if job.status != JobStatus.RUNNING or job.started_at is None:
        return None
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    elapsed = max(0.0, (now - started).total_seconds())
    total, done = configured_epochs(job), epochs_done(job)
    if total and 0 < done:
        return elapsed / done * max(0, total - done)
    fraction = job.progress_info.get("progress", job.progress)
    if isinstance(fraction, int | float) and 0 < fraction <= 1:
        return elapsed / fraction * (1 - fraction)
    return None


def duration_text(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``, ``3 d 4 h``; `EMPTY` for None."""
    if seconds is None:
        return EMPTY
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def cell(value: object) -> object:
    """A table cell: `EMPTY` instead of None (a dataframe shows None as the word "None")."""
    return EMPTY if value is None or value == "" else value


def prefix_cache_text(result: dict | None) -> str | None:
    """Whether a finished run trained on cached frozen-prefix tokens (`pft.prefix_cache`), as
    its summary says; None for a job whose summary does not say (soups, pre-training)."""
    info = (result or {}).get("prefix_cache")
    if not isinstance(info, dict):
        return None
    if not info.get("used"):
        return f"not cached: {info.get('reason') or 'no reason recorded'}"
    size = info.get("bytes") or 0
    return (
        f"cached below block {info.get('blocks')}: {info.get('images', 0):,} images, "
        f"{size / 2**20:.1f} MB in {info.get('storage', 'memory')}, built in "
        f"{info.get('seconds', 0):.1f} s"
    )

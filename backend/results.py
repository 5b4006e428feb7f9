"""Experiment results as plain data: per-strategy summaries over seeds and export rows.

Accuracy of a job is the one of its last recorded epoch (the `metrics` table); out-of-
distribution accuracies come from the job's ``result`` summary (``result["shifts"]``).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from backend.db.models import Job, Metric
from contract.vocab import JobStatus
from pft.strategies import STRATEGIES


def strategy_params(job: Job) -> dict[str, Any]:
    """A job's strategy parameters as people give them: the public ones (a reference job's id,
    not the per-unit angle table the lab filled in from it)."""
    params = dict((job.config or {}).get("strategy_params") or {})
    strategy = STRATEGIES.get(job.strategy or "")
    if strategy is None:
        return params
    public = {p.name for p in strategy.params if p.public}
    return {k: v for k, v in params.items() if k in public}


def strategy_label(job: Job) -> str:
    """The strategy's name, with its public parameters when it has any:
    ``name(k=7, order=smallest, reference_job=12)``."""
    params = strategy_params(job)
    if not params:
        return job.strategy or job.kind
    inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{job.strategy}({inner})"


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def shift_accuracies(job: Job) -> dict[str, float]:
    """{shift: accuracy} from the job's summary (``result["shifts"]``, as pft.training writes
    it: ``{shift: {"acc", "loss"}}``); empty when none were evaluated."""
    shifts = (job.result or {}).get("shifts")
    if not isinstance(shifts, dict):
        return {}
    out = {}
    for name, value in shifts.items():
        acc = value.get("acc") if isinstance(value, dict) else value
        if isinstance(acc, int | float) and not isinstance(acc, bool):
            out[str(name)] = float(acc)
    return out


def summarize(jobs: Iterable[Job], last: Mapping[int, Metric]) -> list[dict[str, Any]]:
    """One entry per distinct strategy (name + parameters), in first-submitted order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(strategy_label(job), []).append(job)
    out = []
    for label, members in groups.items():
        done = [j for j in members if j.status == JobStatus.SUCCEEDED]
        test = [
            last[j.id].test_acc for j in done if j.id in last and last[j.id].test_acc is not None
        ]
        held = [
            last[j.id].heldout_acc
            for j in done
            if j.id in last and last[j.id].heldout_acc is not None
        ]
        ref = members[0]
        by_shift: dict[str, list[float]] = {}
        for job in done:
            for shift, acc in shift_accuracies(job).items():
                by_shift.setdefault(shift, []).append(acc)
        out.append(
            {
                "label": label,
                "strategy": ref.strategy or ref.kind,
                "params": strategy_params(ref),
                "jobs": len(members),
                "succeeded": len(done),
                "test_acc_mean": _mean(test),
                "test_acc_std": statistics.stdev(test)
                if len(test) > 1
                else (0.0 if test else None),
                "heldout_acc_mean": _mean(held),
                "shift_acc_mean": {k: statistics.fmean(v) for k, v in sorted(by_shift.items())},
                "tuned_params": ref.tuned_params,
                "tuned_fraction": (
                    ref.tuned_params / ref.total_params
                    if ref.tuned_params is not None and ref.total_params
                    else None
                ),
            }
        )
    return out


EXPORT_COLUMNS = (
    "job_id",
    "strategy",
    "label",
    "seed",
    "status",
    "tuned_params",
    "total_params",
    "epochs_recorded",
    "train_loss",
    "heldout_acc",
    "test_acc",
    "images_per_sec",
    "shift_accuracies",
)


def export_rows(jobs: Iterable[Job], last: Mapping[int, Metric]) -> list[dict[str, Any]]:
    """One row per job: final metrics, tuned parameters and shift accuracies."""
    rows = []
    for job in jobs:
        m = last.get(job.id)
        rows.append(
            {
                "job_id": job.id,
                "strategy": job.strategy,
                "label": strategy_label(job),
                "seed": job.seed,
                "status": job.status,
                "tuned_params": job.tuned_params,
                "total_params": job.total_params,
                "epochs_recorded": None if m is None else m.epoch,
                "train_loss": None if m is None else m.train_loss,
                "heldout_acc": None if m is None else m.heldout_acc,
                "test_acc": None if m is None else m.test_acc,
                "images_per_sec": None if m is None else m.images_per_sec,
                "shift_accuracies": shift_accuracies(job),
            }
        )
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: ("" if v is None else v) for k, v in row.items()}
        flat["shift_accuracies"] = json.dumps(row["shift_accuracies"], sort_keys=True)
        writer.writerow(flat)
    return buf.getvalue()

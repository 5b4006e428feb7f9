"""Results as plain data: an experiment's per-strategy summaries over seeds and export rows,
and any set of jobs (several experiments, loose fine-tuning jobs, soups) grouped by recipe with
the spread of their accuracies (mean, sd, 95% t-interval, n) in distribution and per shift.

Accuracy of a job is the one of its last recorded epoch (the `metrics` table); out-of-
distribution accuracies come from the job's ``result`` summary (``result["shifts"]``).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from backend.db.models import Job, Metric
from contract.vocab import JobKind, JobStatus
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


# ---------------------------------------------------------------------------------------------
# results across any set of jobs: several experiments, loose fine-tuning jobs, soups

MAX_RESULT_JOBS = 5000  # one answer holds at most this many jobs (the newest)
# Two-sided 95% Student-t quantiles t(0.975, df); beyond the table, interpolated in 1/df
# towards the normal quantile (error below 1e-3).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t(0.975, df) for ``df >= 1``."""
    if df <= len(_T975):
        return _T975[df - 1]
    last = len(_T975)
    return _Z975 + (_T975[-1] - _Z975) * last / df


def spread(values: Iterable[float]) -> dict[str, Any]:
    """``{"n", "mean", "sd", "ci95"}`` of ``values`` (`contract.api.Spread`)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    if n == 1:
        return {"n": 1, "mean": xs[0], "sd": None, "ci95": None}
    sd = statistics.stdev(xs)
    return {
        "n": n,
        "mean": statistics.fmean(xs),
        "sd": sd,
        "ci95": t_quantile_975(n - 1) * sd / math.sqrt(n),
    }


def select_jobs(
    session: Session, *, experiment_ids: Sequence[int], loose: bool, soups: bool
) -> tuple[list[Job], bool]:
    """The jobs of the experiments, the loose fine-tuning jobs (of no experiment) and the soups,
    oldest first; and whether more than `MAX_RESULT_JOBS` matched (the newest are kept)."""
    wanted = []
    if experiment_ids:
        wanted.append(Job.experiment_id.in_(list(experiment_ids)))
    if loose:
        wanted.append(and_(Job.experiment_id.is_(None), Job.kind == JobKind.FINETUNE))
    if soups:
        wanted.append(Job.kind == JobKind.SOUP)
    if not wanted:
        return [], False
    query = select(Job).where(or_(*wanted)).order_by(Job.id.desc()).limit(MAX_RESULT_JOBS + 1)
    jobs = list(session.scalars(query))
    return sorted(jobs[:MAX_RESULT_JOBS], key=lambda j: j.id), len(jobs) > MAX_RESULT_JOBS


def _accuracies(job: Job, last: Mapping[int, Metric]) -> tuple[float | None, float | None]:
    """(held-out, test) accuracy: a fine-tuning job's last epoch, a soup's own evaluation."""
    if job.kind == JobKind.SOUP:
        result = job.result or {}
        return _number(result.get("heldout_acc")), _number(result.get("test_acc"))
    m = last.get(job.id)
    return (None, None) if m is None else (m.heldout_acc, m.test_acc)


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _recipe(job: Job) -> tuple[str, str, dict[str, Any]]:
    """(source, recipe label, what besides the seed makes the recipe) of a job."""
    config = job.config or {}
    if job.kind == JobKind.SOUP:
        params = dict(config.get("params") or {})
        inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        method = str(config.get("method"))
        return "soup", f"soup ({method}{', ' + inner if inner else ''})", params
    hparams = {k: v for k, v in (config.get("hparams") or {}).items() if k != "seed"}
    return ("loose" if job.experiment_id is None else "experiment"), strategy_label(job), hparams


def _tuned(job: Job) -> int | None:
    if job.tuned_params is not None:
        return job.tuned_params
    value = _number((job.result or {}).get("tuned_params"))  # a soup's, from its summary
    return None if value is None else int(value)


def results_view(jobs: Sequence[Job], last: Mapping[int, Metric]) -> dict[str, Any]:
    """Groups (jobs that differ only by seed) with the spread of their accuracies, in distribution
    and per shift, and one row per job (`contract.api.ResultsView`, without the selection)."""
    keyed: dict[str, list[Job]] = {}
    recipes: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for job in jobs:
        source, recipe, extra = _recipe(job)
        key = json.dumps(
            [source, job.experiment_id, job.kind, job.model, job.dataset, recipe, extra],
            sort_keys=True,
            default=str,
        )
        keyed.setdefault(key, []).append(job)
        recipes[key] = (source, recipe, extra)
    labels = _labels({k: (recipes[k], members[0]) for k, members in keyed.items()})
    groups, rows, shifts = [], [], set()
    for key, members in keyed.items():
        source, recipe, extra = recipes[key]
        ref = members[0]
        done = [j for j in members if j.status == JobStatus.SUCCEEDED]
        scores = {j.id: _accuracies(j, last) for j in members}
        by_shift: dict[str, list[float]] = {}
        for job in done:
            for shift, acc in shift_accuracies(job).items():
                by_shift.setdefault(shift, []).append(acc)
        shifts |= set(by_shift)
        tuned = _tuned(ref)
        groups.append(
            {
                "label": labels[key],
                "source": source,
                "experiment_id": ref.experiment_id,
                "kind": ref.kind,
                "model": ref.model,
                "dataset": ref.dataset,
                "recipe": recipe,
                "hparams": extra,
                "jobs": len(members),
                "succeeded": len(done),
                "job_ids": [j.id for j in members],
                "heldout_acc": spread(v for j in done if (v := scores[j.id][0]) is not None),
                "test_acc": spread(v for j in done if (v := scores[j.id][1]) is not None),
                "shift_acc": {k: spread(v) for k, v in sorted(by_shift.items())},
                "tuned_params": tuned,
                "tuned_fraction": tuned / ref.total_params
                if tuned is not None and ref.total_params
                else None,
            }
        )
        for job in members:
            rows.append(
                {
                    "job_id": job.id,
                    "group": labels[key],
                    "experiment_id": job.experiment_id,
                    "kind": job.kind,
                    "status": job.status,
                    "seed": job.seed,
                    "tuned_params": _tuned(job),
                    "heldout_acc": scores[job.id][0],
                    "test_acc": scores[job.id][1],
                    "shift_acc": shift_accuracies(job),
                }
            )
    rows.sort(key=lambda r: r["job_id"])
    return {"shifts": sorted(shifts), "groups": groups, "jobs": rows}


def _labels(groups: Mapping[str, tuple[tuple[str, str, dict[str, Any]], Job]]) -> dict[str, str]:
    """A unique, readable label per group: where it comes from and its recipe, then the model
    and dataset where two groups would read the same, then the first job's id."""

    def base(recipe: tuple[str, str, dict[str, Any]], job: Job) -> str:
        source, label, _ = recipe
        if source == "experiment":
            return f"#{job.experiment_id} · {label}"
        return label if source == "soup" else f"loose · {label}"

    labels = {k: base(*v) for k, v in groups.items()}
    for widen in (lambda k: f" · {groups[k][1].model} / {groups[k][1].dataset}",
                  lambda k: f" · job {groups[k][1].id}"):  # fmt: skip
        counts = collections.Counter(labels.values())
        labels = {k: v + widen(k) if counts[v] > 1 else v for k, v in labels.items()}
    return labels

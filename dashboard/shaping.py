"""Turns the API's answers (`contract.api` models) into the plain data the figures take (pure)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contract.api import (
    AngleRow,
    AnglesPublic,
    JobPublic,
    MetricPublic,
    ResultsView,
    StrategySummary,
    UnitMapPublic,
)
from contract.vocab import JobKind, JobStatus

CURVE_COLUMNS = ("epoch", "train_loss", "heldout_acc", "test_acc", "images_per_sec")


def degrees(rows: Iterable[AngleRow]) -> dict[str, float]:
    """``{name: angle in degrees}`` of angle rows."""
    return {r.name: r.angle_deg for r in rows}


def trajectory(angles: AnglesPublic) -> dict[int, dict[str, float]]:
    """Per-unit angles after each epoch, ``{epoch: {unit: degrees}}``."""
    return {e.epoch: degrees(e.units) for e in sorted(angles.epochs, key=lambda e: e.epoch)}


def summary_points(rows: Iterable[StrategySummary]) -> list[dict]:
    """Scatter points (strategy, tuned_params, accuracy, spread) from per-strategy summaries.

    Rows without an accuracy yet (jobs still running) or without a parameter count are skipped.
    """
    return [
        {
            "strategy": row.label,
            "tuned_params": row.tuned_params,
            "accuracy": row.test_acc_mean,
            "spread": row.test_acc_std,
        }
        for row in rows
        if row.test_acc_mean is not None and row.tuned_params
    ]


def metrics_table(metrics: Iterable[MetricPublic]) -> list[dict]:
    """Per-epoch metrics sorted by epoch, only the columns the curves use."""
    rows = (m.model_dump(include=set(CURVE_COLUMNS)) for m in metrics)
    return sorted(rows, key=lambda m: m["epoch"])


# ---------------------------------------------------------------------------------------------
# parallel coordinates of an experiment's configurations (Results page)

LOWEST_BLOCK = "lowest tuned block"


@dataclass(frozen=True)
class Axis:
    """One axis of the parallel-coordinates view: a column of the configuration rows."""

    key: str  # the configuration row's column
    label: str  # the axis title; brushes come back under it
    log: bool = False  # drawn as log10 (learning rates)
    ticks: tuple[str, ...] = ()  # a categorical axis: the text of values 0, 1, ...

    def value(self, row: Mapping[str, Any]) -> float | None:
        """The row's position on this axis (None: the row has no value here)."""
        v = row.get(self.key)
        if v is None or isinstance(v, bool) or not isinstance(v, int | float):
            return None
        if self.log:
            return math.log10(v) if v > 0 else None
        return float(v)


def job_points(
    jobs: Iterable[JobPublic],
    exported: Iterable[Mapping[str, Any]],
    unit_map: UnitMapPublic | None = None,
) -> list[dict[str, Any]]:
    """One point per succeeded fine-tuning job with an accuracy: its strategy label and final
    accuracies from the experiment's export rows (``GET /experiments/{id}/results.json``,
    ``jobs``), its hyperparameters but the seed from its spec, and its unit mask from its run's
    selection (``result["strategy"]["units"]``), counted per group of ``unit_map``."""
    by_id = {j.id: j for j in jobs}
    where = {u.name: (u.group, u.block) for u in unit_map.units} if unit_map else {}
    groups = list(unit_map.groups) if unit_map else []
    points = []
    for row in exported:
        job = by_id.get(int(row["job_id"]))
        if job is None or job.kind != JobKind.FINETUNE or job.status != JobStatus.SUCCEEDED:
            continue
        if row.get("test_acc") is None and row.get("heldout_acc") is None:
            continue
        hparams = {k: v for k, v in (job.config.get("hparams") or {}).items() if k != "seed"}
        units = [str(u) for u in ((job.result or {}).get("strategy") or {}).get("units") or ()]
        point: dict[str, Any] = {
            "job_id": job.id,
            "label": str(row["label"]),
            "hparams": hparams,
            "lr": hparams.get("lr"),
            "epochs": hparams.get("epochs"),
            "units": sorted(units),
            "tuned_params": row.get("tuned_params", job.tuned_params),
            "heldout_acc": row.get("heldout_acc"),
            "test_acc": row.get("test_acc"),
        }
        if unit_map is not None:
            for group in groups:
                point[f"units:{group}"] = sum(1 for u in units if where.get(u, ("",))[0] == group)
            blocks = [where[u][1] for u in units if u in where]
            point[LOWEST_BLOCK] = min(blocks) if blocks else unit_map.depth  # depth: none
        points.append(point)
    return points


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def configurations(points: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Job points grouped per configuration (strategy label, hyperparameters but the seed, unit
    mask), first-seen order: the mean held-out and test accuracy over its jobs and their number
    ``n``. A thousand jobs of a sweep become a few dozen lines."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        key = json.dumps([p["label"], p["hparams"], p["units"]], sort_keys=True, default=str)
        groups.setdefault(key, []).append(p)
    labels = list(dict.fromkeys(p[0]["label"] for p in groups.values()))
    out = []
    for members in groups.values():
        first = members[0]
        row = {k: v for k, v in first.items() if k not in ("job_id", "heldout_acc", "test_acc")}
        row |= {
            "strategy_index": labels.index(first["label"]),
            "heldout_acc": _mean(m["heldout_acc"] for m in members),
            "test_acc": _mean(m["test_acc"] for m in members),
            "n": len(members),
            "job_ids": [m["job_id"] for m in members],
        }
        out.append(row)
    return out


def parcoords_axes(configs: Sequence[Mapping[str, Any]]) -> list[Axis]:
    """The axes for ``configs``: strategy, tuned units per group, lowest tuned block, learning
    rate (log10), epochs, tuned parameters, held-out and test accuracy (those some row has)."""
    labels = list(dict.fromkeys(c["label"] for c in configs))
    unit_keys = list(dict.fromkeys(k for c in configs for k in c if k.startswith("units:")))
    axes = [Axis("strategy_index", "strategy", ticks=tuple(labels))]
    axes += [Axis(k, f"{k.removeprefix('units:')} units") for k in unit_keys]
    axes += [
        Axis(LOWEST_BLOCK, LOWEST_BLOCK),
        Axis("lr", "learning rate", log=True),
        Axis("epochs", "epochs"),
        Axis("tuned_params", "tuned params"),
        Axis("heldout_acc", "held-out acc"),
        Axis("test_acc", "test acc"),
    ]
    return [a for a in axes if any(a.value(c) is not None for c in configs)]


def brushed(
    configs: Sequence[Mapping[str, Any]],
    axes: Sequence[Axis],
    ranges: Mapping[str, Any],
) -> list[Mapping[str, Any]]:
    """The configurations inside every brushed range: ``ranges`` maps an axis label to one
    ``[low, high]`` or a list of them (a row passes an axis when it lies in any of them, bounds
    included). Labels of no axis (an older figure's) and empty lists brush nothing."""
    by_label = {a.label: a for a in axes}
    active = []
    for label, spans in ranges.items():
        if label not in by_label or not spans:
            continue
        spans = [spans] if not isinstance(spans[0], list | tuple) else spans
        active.append((by_label[label], [(min(s), max(s)) for s in spans]))
    out = []
    for row in configs:
        values = [(axis.value(row), spans) for axis, spans in active]
        if all(v is not None and any(lo <= v <= hi for lo, hi in spans) for v, spans in values):
            out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# results across any set of jobs (Results page, ``GET /results``)

SOURCES = {"experiment": "experiment", "loose": "loose job(s)", "soup": "soup(s)"}


def _shift_columns(view: ResultsView) -> list[str]:
    return [f"{shift} acc" for shift in view.shifts]


def results_table(view: ResultsView, experiment_names: Mapping[int, str]) -> list[dict[str, Any]]:
    """One row per group of ``view``: where it comes from, its recipe, how many jobs, and held-
    out, test and per-shift accuracy as mean, sample sd and half-width of the 95% t-interval
    over its succeeded jobs (``n``); None where no value exists (one seed has no spread)."""
    rows = []
    for g in view.groups:
        source = SOURCES.get(g.source, g.source)
        if g.experiment_id is not None:
            source = experiment_names.get(g.experiment_id, f"#{g.experiment_id}")
        row: dict[str, Any] = {
            "group": g.label,
            "from": source,
            "model / dataset": f"{g.model} / {g.dataset}",
            "jobs": g.jobs,
            "n": g.test_acc.n,
            "test acc": g.test_acc.mean,
            "test sd": g.test_acc.sd,
            "test ±95%": g.test_acc.ci95,
            "held-out acc": g.heldout_acc.mean,
            "held-out sd": g.heldout_acc.sd,
            "held-out ±95%": g.heldout_acc.ci95,
        }
        for shift, column in zip(view.shifts, _shift_columns(view), strict=True):
            s = g.shift_acc.get(shift)
            row[column] = None if s is None else s.mean
            row[f"{shift} ±95%"] = None if s is None else s.ci95
        row["tuned params"] = g.tuned_params
        rows.append(row)
    return rows


def result_points(view: ResultsView) -> list[dict[str, Any]]:
    """Scatter points of the groups with a test accuracy and a parameter count: mean test
    accuracy against tuned parameters, the 95% t-interval as the error bar."""
    return [
        {
            "strategy": g.label,
            "tuned_params": g.tuned_params,
            "accuracy": g.test_acc.mean,
            "spread": g.test_acc.ci95,
        }
        for g in view.groups
        if g.test_acc.mean is not None and g.tuned_params
    ]


def result_job_rows(view: ResultsView) -> list[dict[str, Any]]:
    """One row per job of ``view``: its group, seed, status and final accuracies."""
    rows = []
    for j in view.jobs:
        row: dict[str, Any] = {
            "job": j.job_id,
            "group": j.group,
            "seed": j.seed,
            "status": str(j.status),
            "held-out acc": j.heldout_acc,
            "test acc": j.test_acc,
        }
        for shift, column in zip(view.shifts, _shift_columns(view), strict=True):
            row[column] = j.shift_acc.get(shift)
        rows.append(row)
    return rows

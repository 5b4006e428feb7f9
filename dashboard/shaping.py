"""Turns the API's answers (`contract.api` models) into the plain data the figures take (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from contract.api import AngleRow, AnglesPublic, MetricPublic, StrategySummary

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

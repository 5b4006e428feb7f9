"""Turns backend answers into the plain data the figures take (pure, torch-free).

The backend stores angles as rows (job, epoch, scope, name, angle_deg) with ``epoch = -1`` for
the final weights, and may answer them as rows, as ``{"units": [...], "tensors": [...]}``
records (``pft.angles.AngleReport.to_dict()``) or as name -> degrees maps; all end up here as
``{name: degrees}`` per scope and epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FINAL = -1  # backend.db.models.FINAL_EPOCH, the epoch of angles of the final weights
SCOPES = {"unit": "units", "units": "units", "tensor": "tensors", "tensors": "tensors"}


@dataclass
class Angles:
    units: dict[str, float] = field(default_factory=dict)  # final per-unit angles
    tensors: dict[str, float] = field(default_factory=dict)  # final per-tensor angles
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> unit angles

    @property
    def empty(self) -> bool:
        return not self.units and not self.tensors


def _as_map(value: Any) -> dict[str, float]:
    """``{name: deg}`` from a map, or from records ``[{"name", "angle_deg"}]``."""
    if isinstance(value, Mapping):
        return {
            str(k): float(v["angle_deg"] if isinstance(v, Mapping) else v)
            for k, v in value.items()
            if v is not None
        }
    out = {}
    for row in value or []:
        deg = row.get("angle_deg", row.get("angle", row.get("value")))
        if deg is not None:
            out[str(row["name"])] = float(deg)
    return out


def _from_rows(rows: Iterable[Mapping]) -> Angles:
    out = Angles()
    for row in rows:
        scope = SCOPES.get(str(row.get("scope", "unit")), "units")
        epoch = int(row["epoch"]) if row.get("epoch") is not None else FINAL
        if row.get("angle_deg") is None:
            continue
        deg = float(row["angle_deg"])
        if epoch == FINAL:
            getattr(out, scope)[row["name"]] = deg
        elif scope == "units":
            out.epochs.setdefault(epoch, {})[row["name"]] = deg
    return out


def normalize_angles(body: Any) -> Angles:
    """Final per-unit and per-tensor angles plus the per-epoch unit trajectory."""
    if isinstance(body, list):
        return _from_rows(body)
    if not isinstance(body, Mapping):
        return Angles()
    for key in ("items", "rows", "angles"):
        if isinstance(body.get(key), list):
            return _from_rows(body[key])
    final = (body.get("final") if "final" in body else body) or {}
    out = Angles(units=_as_map(final.get("units")), tensors=_as_map(final.get("tensors")))
    per_epoch = body.get("epochs", body.get("per_epoch")) or {}
    if isinstance(per_epoch, Mapping):
        per_epoch = [
            {"epoch": k, **(v if isinstance(v, Mapping) and "units" in v else {"units": v})}
            for k, v in per_epoch.items()
        ]
    for entry in per_epoch:
        epoch = int(entry["epoch"])
        if epoch != FINAL:
            out.epochs[epoch] = _as_map(entry.get("units"))
    return out


def summary_points(rows: Iterable[Mapping]) -> list[dict]:
    """Scatter points (strategy, tuned_params, accuracy, spread) from per-strategy summaries.

    Rows without an accuracy yet (jobs still running) or without a parameter count are skipped.
    """
    points = []
    for row in rows:
        acc = _first(row, "test_acc_mean", "accuracy_mean", "acc_mean", "mean", "accuracy")
        params = _first(row, "tuned_params", "tuned_params_mean")
        if acc is None or not params:
            continue
        spread = _first(row, "test_acc_std", "accuracy_std", "acc_std", "std", "spread")
        points.append(
            {
                "strategy": str(row.get("label") or row.get("strategy") or row.get("name")),
                "tuned_params": int(params),
                "accuracy": float(acc),
                "spread": None if spread is None else float(spread),
            }
        )
    return points


def _first(row: Mapping, *keys: str) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    return None


def metrics_table(metrics: Iterable[Mapping]) -> list[dict]:
    """Per-epoch metrics sorted by epoch, only the columns the curves use."""
    keys = ("epoch", "train_loss", "heldout_acc", "test_acc", "images_per_sec")
    return sorted(({k: m.get(k) for k in keys} for m in metrics), key=lambda m: m["epoch"])

"""The study's results on disk, and the choices made from them on the held-out split.

Layout under the study folder: ``runs/<dataset>/<run_id>/`` (``spec.json``, the engine's
``metrics.json``, ``angles.json``, ``delta.safetensors``, and ``timing.json``),
``soups/<dataset>/<name>.json``, ``criteria/<dataset>/<criterion>-s<seed>.json`` (a cheap
criterion's per-unit scores, as `pft rank --json` prints them, with the configuration that made
them), ``study.json`` (preset, chosen learning rates, reference angles) and ``elapsed.json``
(the real time of each `pft reproduce` session). A :class:`Record` is one finished run;
everything downstream works on records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pft.reproduce.plan import SELECTION_SEED, TRAINED_CRITERIA, RunSpec, ladder


@dataclass
class Record:
    spec: RunSpec
    summary: dict[str, Any]  # the engine's metrics.json
    unit_angles: dict[str, float] = field(default_factory=dict)  # final angles (degrees)
    units: list[dict[str, Any]] = field(default_factory=list)  # angles.json "units" rows
    trajectory: list[dict[str, Any]] = field(default_factory=list)  # per-epoch unit angles
    wall_seconds: float | None = None  # training + evaluation, measured by the executor
    folder: Path | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def heldout(self) -> float:
        return float(self.summary["heldout_acc"])

    @property
    def test(self) -> float:
        return float(self.summary["test_acc"])

    @property
    def tuned_params(self) -> int:
        return int(self.summary["strategy"]["tuned_params"])

    @property
    def shift_acc(self) -> dict[str, float]:
        return {k: float(v["acc"]) for k, v in self.summary.get("shifts", {}).items()}


def run_dir(root: Path, spec: RunSpec) -> Path:
    return Path(root) / "runs" / spec.dataset / spec.run_id


def soup_path(root: Path, dataset: str, name: str) -> Path:
    return Path(root) / "soups" / dataset / f"{name}.json"


def criteria_path(root: Path, dataset: str, criterion: str, seed: int) -> Path:
    return Path(root) / "criteria" / dataset / f"{criterion}-s{seed}.json"


def load_criteria(root: Path, dataset: str) -> dict[str, dict[int, dict[str, Any]]]:
    """criterion -> seed -> its scores (``{"criterion", "units", "seconds"}``) on disk."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for p in sorted((Path(root) / "criteria" / dataset).glob("*.json")):
        data = json.loads(p.read_text())
        out.setdefault(data["scores"]["criterion"], {})[int(data["config"]["seed"])] = data[
            "scores"
        ]
    return out


def short_angle_scores(r: Record) -> dict[str, Any]:
    """A short full run's final angles as the ``short_angle`` criterion's scores; its cost is
    the run's training seconds (its evaluation excluded, as for the other criteria)."""
    return {
        "criterion": TRAINED_CRITERIA[0],
        "units": [
            {"name": u["name"], "group": u["group"], "score": u["angle_deg"]} for u in r.units
        ],
        "seconds": float(r.summary.get("train_seconds", r.wall_seconds or 0.0)),
    }


def angle_scores(
    angles: dict[str, float], units: list[dict[str, Any]], seconds: float = 0.0
) -> dict[str, Any]:
    """Per-unit angles (``{unit: degrees}``) in the scores shape `pft.criteria.compare` takes."""
    return {
        "units": [
            {"name": u["name"], "group": u["group"], "score": angles[u["name"]]} for u in units
        ],
        "seconds": seconds,
    }


def mean_scores(per_seed: dict[int, dict[str, Any]]) -> dict[str, float]:
    """unit -> score averaged over the seeds' rankings (what ``criterion_topk`` selects on,
    as ``angle_topk`` selects on the mean angles of the seeds' full runs)."""
    rows = [s["units"] for _, s in sorted(per_seed.items())]
    if not rows:
        return {}
    return {u["name"]: sum(r[i]["score"] for r in rows) / len(rows) for i, u in enumerate(rows[0])}


def load_record(folder: Path) -> Record | None:
    """The record of a finished run folder, or None while it is unfinished."""
    folder = Path(folder)
    files = {n: folder / f"{n}.json" for n in ("spec", "metrics", "angles", "timing")}
    if not (files["spec"].is_file() and files["metrics"].is_file()):
        return None
    spec = RunSpec.from_dict(json.loads(files["spec"].read_text()))
    summary = json.loads(files["metrics"].read_text())
    angles = json.loads(files["angles"].read_text()) if files["angles"].is_file() else {}
    units = angles.get("units", [])
    timing = json.loads(files["timing"].read_text()) if files["timing"].is_file() else {}
    return Record(
        spec=spec,
        summary=summary,
        unit_angles={u["name"]: float(u["angle_deg"]) for u in units},
        units=units,
        trajectory=angles.get("trajectory", []),
        wall_seconds=timing.get("wall_seconds"),
        folder=folder,
    )


def load_records(root: Path, dataset: str | None = None) -> list[Record]:
    base = Path(root) / "runs"
    folders = sorted(base.glob(f"{dataset or '*'}/*"))
    return [r for r in (load_record(f) for f in folders if f.is_dir()) if r is not None]


def load_soups(root: Path, dataset: str) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text()) for p in sorted((Path(root) / "soups" / dataset).glob("*.json"))
    ]


def is_selection(r: Record) -> bool:
    """A run of the learning-rate grid: the selection seed, never reported."""
    return r.spec.seed == SELECTION_SEED and r.spec.phase != "cheap"


def choose_lrs(records: Iterable[Record]) -> dict[str, float]:
    """The learning rate per strategy label with the best held-out accuracy of the selection
    seed (ties: lower held-out loss, then the smaller rate). Test accuracy is never looked at,
    and no reported seed takes part."""
    best: dict[str, tuple[tuple[float, float, float], float]] = {}
    for r in records:
        if not is_selection(r):
            continue
        key = (-r.heldout, float(r.summary["heldout_loss"]), r.spec.lr)
        if r.label not in best or key < best[r.label][0]:
            best[r.label] = (key, r.spec.lr)
    return {label: lr for label, (_, lr) in best.items()}


def main_records(records: Iterable[Record], chosen: dict[str, float]) -> list[Record]:
    """The reported runs: each label's chosen learning rate, every reported seed (neither the
    selection seed, nor cheap runs, nor the criteria phase's runs)."""
    return [
        r
        for r in records
        if r.spec.phase not in ("cheap", "criteria")
        and not is_selection(r)
        and chosen.get(r.label) == r.spec.lr
    ]


def tried_rates(records: Iterable[Record]) -> dict[str, list[float]]:
    """The learning rates each label tried with the selection seed, sorted."""
    out: dict[str, set[float]] = {}
    for r in records:
        if is_selection(r):
            out.setdefault(r.label, set()).add(r.spec.lr)
    return {k: sorted(v) for k, v in out.items()}


def at_edge(records: Iterable[Record]) -> dict[str, str]:
    """Labels whose chosen rate is the largest ("top") or smallest ("bottom") they tried; a
    single-rate grid is at both edges ("both")."""
    records = list(records)
    chosen, tried = choose_lrs(records), tried_rates(records)
    out = {}
    for label, lrs in tried.items():
        lr = chosen[label]
        if len(lrs) == 1:
            out[label] = "both"
        elif lr == lrs[-1]:
            out[label] = "top"
        elif lr == lrs[0]:
            out[label] = "bottom"
    return out


def widen(records: Iterable[Record]) -> list[RunSpec]:
    """The next grid runs: one ladder step past the edge where each label's chosen rate lies
    (both ways for a single-rate grid). Empty when every chosen rate is inside its grid."""
    records = list(records)
    tried = tried_rates(records)
    template = {r.label: r.spec for r in records if is_selection(r)}
    out = []
    for label, edge in at_edge(records).items():
        lrs = tried[label]
        if edge in ("top", "both"):
            out.append(replace(template[label], lr=ladder(lrs[-1], up=True)))
        if edge in ("bottom", "both"):
            out.append(replace(template[label], lr=ladder(lrs[0], up=False)))
    return out


def mean_angles(records: Sequence[Record]) -> dict[str, float]:
    """Per-unit angle averaged over runs (the reference ranking for ``angle_topk``)."""
    if not records:
        return {}
    names = list(records[0].unit_angles)
    return {n: sum(r.unit_angles[n] for r in records) / len(records) for n in names}


def unit_order(records: Sequence[Record]) -> list[dict[str, Any]]:
    """``[{name, group, block}]`` of the model's units in depth order (from angles.json)."""
    for r in records:
        if r.units:
            return [{k: u.get(k) for k in ("name", "group", "block")} for u in r.units]
    return []

"""Expected wall time of a preset, extrapolated from measured runs.

A run costs ``epochs × n_train × c_train[family]`` (training, seconds per image) plus
``(epochs × (n_heldout + n_test) + n_shifts × n_test) × c_eval`` (evaluation, seconds per image,
forward only). Both rates are measured from finished runs of the same backbone, so the estimate
is only as good as the machine those runs had (a shared CPU overstates it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pft.reproduce.plan import Preset, count_plan, family
from pft.reproduce.results import Record


@dataclass(frozen=True)
class Sizes:
    train: int
    heldout: int
    test: int


@dataclass(frozen=True)
class Rates:
    train: dict[str, float]  # family -> seconds per training image (forward + backward + step)
    eval: float  # seconds per evaluated image (forward only)


def dataset_sizes(preset: Preset) -> dict[str, Sizes]:
    """Split sizes of the preset's targets (loads the datasets)."""
    from pft.datasets import load_dataset

    out = {}
    for t in preset.targets:
        d = load_dataset(t.dataset)
        cap = t.train_limit or max(len(d.train), len(d.heldout), len(d.test))
        out[t.dataset] = Sizes(
            min(cap, len(d.train)), min(cap, len(d.heldout)), min(cap, len(d.test))
        )
    return out


def measure_rates(records: Sequence[Record], sizes: dict[str, Sizes]) -> Rates:
    train: dict[str, list[float]] = {}
    evals: list[float] = []
    for r in records:
        s = r.summary
        images = s["images_per_sec"] * s["train_seconds"]  # epochs × n_train
        if images <= 0:
            continue
        train.setdefault(family(r.spec.strategy), []).append(s["train_seconds"] / images)
        size = sizes.get(r.spec.dataset)
        if r.wall_seconds is not None and size is not None:
            evaluated = (
                r.spec.epochs * (size.heldout + size.test) + len(s.get("shifts", {})) * size.test
            )
            evals.append(max(0.0, r.wall_seconds - s["train_seconds"]) / evaluated)
    return Rates(
        {f: sum(v) / len(v) for f, v in train.items()}, sum(evals) / len(evals) if evals else 0.0
    )


def estimate_seconds(preset: Preset, sizes: dict[str, Sizes], rates: Rates) -> dict[str, float]:
    """Expected seconds per target dataset (training + evaluation of every planned run)."""
    counts = count_plan(preset)
    fallback = max(rates.train.values()) if rates.train else 0.0
    out = {}
    for t in preset.targets:
        size = sizes[t.dataset]
        total = 0.0
        for fam, epochs in counts.epochs_by_family[t.dataset].items():
            total += epochs * size.train * rates.train.get(fam, fallback)
            total += epochs * (size.heldout + size.test) * rates.eval
        runs = counts.runs_by_dataset[t.dataset]
        total += runs * len(preset.shifts) * size.test * rates.eval
        out[t.dataset] = total
    return out

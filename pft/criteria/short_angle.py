"""Angles after a short full fine-tuning run: the paper's ranking at a fraction of its cost.

Runs the engine's full fine-tuning (`pft.training.train`, strategy ``full``) for a few epochs
in a temporary folder and returns the final per-unit angles. The run is its own configuration:
the engine rebuilds the model from its catalogue name (``unit_map.model``) with a head
initialised from ``seed``, which also seeds its data order and augmentation. Only whole epochs
are supported: the engine's schedule is defined per epoch.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn

from contract.vocab import AngleScope
from pft.criteria.registry import Progress
from pft.datasets import DatasetSplits
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.strategies import FULL_FINETUNING
from pft.training import train
from pft.units import UnitMap


class _Steps:
    """Engine callbacks that report steps as progress."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_progress(self, info: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(int(info["step"]), int(info["total_steps"]))


def score(
    model: nn.Module,
    unit_map: UnitMap,
    data: DatasetSplits,
    *,
    seed: int,
    epochs: int,
    lr: float,
    batch_size: int,
    pretrained: bool = True,
    overrides: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: Progress = None,
) -> dict[str, float]:
    spec = FinetuneSpec(
        model=unit_map.model,
        dataset=data.name,
        strategy=FULL_FINETUNING,
        hparams=Hparams(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, head_seed=seed),
        pretrained=pretrained,
        model_overrides=dict(overrides or {}),
    )
    with tempfile.TemporaryDirectory(prefix="pft-short-angle-") as out:
        run = train(spec, out, device=device, callbacks=_Steps(progress))
    return {
        r["name"]: float(r["angle_deg"]) for r in run.angles if r["scope"] == AngleScope.UNIT.value
    }

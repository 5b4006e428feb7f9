"""Runs one selection criterion: per-unit scores of a model on a dataset, timed.

`score_units` runs a registry criterion (`pft.criteria.registry`) on a model already built;
`rank` builds everything from names first (the model at its pre-trained point with a head
initialised from ``seed``, its unit map, the dataset), as `pft rank` and a lab job do. Only
the criterion's own work is timed.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pft.criteria.registry import CRITERIA, Criterion, Progress, get_criterion
from pft.criteria.scores import Scores
from pft.datasets import DatasetSplits
from pft.errors import PftError
from pft.units import UnitMap


def _checked(
    criterion: str, params: dict[str, Any] | None, seed: Any, reference: Any
) -> tuple[Criterion, dict[str, Any]]:
    c = get_criterion(criterion)
    checked = c.validate(params)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise PftError(f"seed must be an integer >= 0, got {seed!r}", field="seed")
    if reference is not None and not c.needs_reference:
        takes = [x.name for x in CRITERIA.values() if x.needs_reference]
        raise PftError(
            f"criterion {c.name!r} takes no reference (criteria that do: {', '.join(takes)})",
            field="reference",
        )
    return c, checked


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device a criterion runs on: ``device``, else CUDA when available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def score_units(
    criterion: str,
    model: nn.Module | None,
    unit_map: UnitMap,
    data: DatasetSplits,
    *,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    reference: str | Path | None = None,
    pretrained: bool = True,
    overrides: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: Progress = None,
) -> Scores:
    """Scores of every unit by ``criterion`` (PftError, with ``field``, on bad input).

    ``reference`` goes to criteria that rank from a finished run, ``pretrained`` and
    ``overrides`` to those that train (they rebuild the model from ``unit_map.model``); the
    others score ``model`` as it is.
    """
    c, checked = _checked(criterion, params, seed, reference)
    extra: dict[str, Any] = {}
    if c.needs_reference:
        extra["reference"] = reference
    if c.needs_training:
        extra |= {"pretrained": pretrained, "overrides": dict(overrides or {})}
    score = importlib.import_module(c.module).score
    start = time.perf_counter()
    values = score(
        model,
        unit_map,
        data,
        seed=seed,
        device=resolve_device(device),
        progress=progress,
        **checked,
        **extra,
    )
    return Scores.of(c.name, unit_map, values, time.perf_counter() - start)


def rank(
    model: str,
    dataset: str,
    criterion: str,
    *,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    reference: str | Path | None = None,
    pretrained: bool = True,
    overrides: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: Progress = None,
) -> Scores:
    """`score_units` on catalogue names: ``model`` (a catalogue or timm name) on ``dataset``."""
    from pft.base_model import build_pretrained
    from pft.dataset_catalog import dataset_info
    from pft.datasets import load_dataset
    from pft.model_catalog import get_spec, unit_map_for
    from pft.model_factory import compute_shape_table

    c, _ = _checked(criterion, params, seed, reference)  # before any loading
    dataset_info(dataset)
    spec = get_spec(model, overrides)
    data = load_dataset(dataset, image_size=int(spec.overrides.get("img_size", 224)))
    um = unit_map_for(model, data.num_classes, overrides, compute=compute_shape_table)
    net = None
    if not (c.needs_reference or c.needs_training):  # those build their own models
        net = build_pretrained(
            model, data.num_classes, pretrained=pretrained, overrides=overrides, head_seed=seed
        )
    return score_units(
        c.name,
        net,
        um,
        data,
        seed=seed,
        params=params,
        reference=reference,
        pretrained=pretrained,
        overrides=overrides,
        device=device,
        progress=progress,
    )

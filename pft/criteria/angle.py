"""Fine-tuned angles as a criterion: each unit's angle after a full fine-tuning run (the paper).

The reference is that run's output: its delta checkpoint (a ``.safetensors`` file, or its run
folder), whose angles to the pre-trained point are computed here by `pft.angles` (the point is
rebuilt from the checkpoint's own metadata), or an ``angles.json`` it wrote. Either way the run
must have tuned every unit (a reference strategy: `pft.strategies.reference_strategies`),
since a unit a partial run froze has an angle of 0 that ranks nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pft.angles import compute_angles
from pft.checkpoint import base_from_meta, delta_meta, delta_path
from pft.datasets import DatasetSplits
from pft.errors import PftError
from pft.strategies import reference_strategies
from pft.units import UnitMap
from pft.weights import SafetensorsWeights

ANGLES_FILE = "angles.json"


def score(
    model: nn.Module,
    unit_map: UnitMap,
    data: DatasetSplits,
    *,
    reference: str | Path | None = None,
    **_: Any,  # seed, device, progress: the reference already fixed them
) -> dict[str, float]:
    if reference is None:
        raise PftError(
            "the angle criterion needs a reference: the delta checkpoint, run folder or "
            f"angles.json of a {' or '.join(reference_strategies())} fine-tuning run",
            field="reference",
        )
    path = Path(reference)
    if path.suffix == ".json" or (path.is_dir() and not delta_path(path).is_file()):
        return _from_angles_file(path / ANGLES_FILE if path.is_dir() else path, unit_map)
    return _from_delta(delta_path(path), unit_map)


def _refuse_partial(strategy: Any, where: Path) -> None:
    allowed = reference_strategies()
    if strategy not in allowed:
        raise PftError(
            f"reference {str(where)!r} comes from a {strategy!r} run; angles rank units only "
            f"after a {' or '.join(allowed)} fine-tuning run",
            field="reference",
        )


def _from_delta(path: Path, unit_map: UnitMap) -> dict[str, float]:
    if not path.is_file():
        raise PftError(f"reference {str(path)!r} does not exist", field="reference")
    weights = SafetensorsWeights(path)
    meta = delta_meta(weights.metadata, path)
    _refuse_partial(meta.get("strategy"), path)
    if meta.get("base_model") != unit_map.model:
        raise PftError(
            f"reference {str(path)!r} fine-tuned {meta.get('base_model')!r}, not "
            f"{unit_map.model!r}",
            field="reference",
        )
    with torch.no_grad():
        base = dict(base_from_meta(meta).named_parameters())
        report = compute_angles(base, weights.over(base), unit_map)
    return report.units


def _from_angles_file(path: Path, unit_map: UnitMap) -> dict[str, float]:
    if not path.is_file():
        raise PftError(f"reference {str(path)!r} does not exist", field="reference")
    try:
        data = json.loads(path.read_text())
        units = {u["name"]: float(u["angle_deg"]) for u in data["units"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise PftError(
            f"reference {str(path)!r} is not an angles.json ({exc})", field="reference"
        ) from None
    _refuse_partial(data.get("strategy", reference_strategies()[0]), path)
    missing = [u for u in unit_map.unit_names if u not in units]
    if missing:
        raise PftError(
            f"reference {str(path)!r} has no angle for unit {missing[0]!r} of {unit_map.model}",
            field="reference",
        )
    return {u: units[u] for u in unit_map.unit_names}

"""Calibrations cached in the data folder, one JSON file per device kind + model + image size
(torch-free: the CLI reads them before deciding whether torch must measure anything)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pft import paths
from pft.cost.predict import CALIBRATION_VERSION, calibration_key

FOLDER = "calibrations"  # below the data folder's models/ (calibrations describe models)


def calibrations_dir() -> Path:
    return paths.layout().models / FOLDER


def cache_path(
    device_kind: str, model: str, img_size: int, overrides: dict[str, Any] | None = None
) -> Path:
    key = calibration_key(device_kind, model, img_size, overrides)
    return calibrations_dir() / f"{key}.json"


def load(
    device_kind: str, model: str, img_size: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The cached calibration, or None (absent, unreadable or of another version)."""
    path = cache_path(device_kind, model, img_size, overrides)
    try:
        cal = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cal if isinstance(cal, dict) and cal.get("version") == CALIBRATION_VERSION else None


def save(cal: dict[str, Any]) -> Path:
    """Writes ``cal`` atomically under its key; returns the file."""
    path = cache_path(
        cal["device_kind"], cal["model"], int(cal["img_size"]), cal.get("model_overrides")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cal, indent=2, sort_keys=True))
    tmp.replace(path)
    return path

"""Where pft keeps its files: one data folder (``PFT_DATA_DIR``, default ``./data``)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    return Path(os.environ.get("PFT_DATA_DIR", "data")).expanduser().resolve()


def datasets_dir() -> Path:
    """Root of image folders and downloaded datasets (``PFT_DATASETS_DIR``)."""
    env = os.environ.get("PFT_DATASETS_DIR")
    return Path(env).expanduser().resolve() if env else data_dir() / "datasets"


def models_dir() -> Path:
    """Built-in pre-trained backbones (``pft pretrain`` writes here)."""
    return data_dir() / "models"


def shapes_cache_dir() -> Path:
    """Unit-map shape tables computed at run time for models not shipped with pft."""
    return data_dir() / "shapes"


def contained(root: Path, candidate: str | Path) -> Path:
    """Resolves ``candidate`` below ``root`` (symlinks followed) or raises PftError.

    Used for every user-supplied path: dataset folder names, artifact paths.
    """
    from pft.errors import PftError

    root = Path(root).resolve()
    text = str(candidate)
    if "\x00" in text:
        raise PftError("path contains a NUL byte")
    path = (root / text).resolve()
    if path != root and root not in path.parents:
        raise PftError(f"path {text!r} is outside {root}; only paths inside it are accepted")
    return path

"""Where pft keeps its files: one data folder (``PFT_DATA_DIR``, default ``./data``), laid out
by `contract.layout.DataLayout` and read through `contract.settings.LabSettings`.

The settings are read on every call (never cached) so that a process, or a test, that changes
``PFT_DATA_DIR`` sees the new folder at once.
"""

from __future__ import annotations

from pathlib import Path

from contract.layout import DataLayout
from contract.settings import LabSettings


def _settings() -> LabSettings:
    return LabSettings()


def layout() -> DataLayout:
    return _settings().layout


def use_shipped_weights() -> bool:
    """Whether built-in backbones may load the shipped weights (``PFT_SHIPPED_WEIGHTS``)."""
    return _settings().shipped_weights


def data_dir() -> Path:
    return layout().root


def datasets_dir() -> Path:
    """Root of image folders and downloaded datasets (``PFT_DATASETS_DIR``)."""
    return _settings().resolved_datasets_dir


def shapes_cache_dir() -> Path:
    """Unit-map shape tables computed at run time for models not shipped with pft."""
    return layout().shapes


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

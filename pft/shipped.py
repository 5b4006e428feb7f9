"""Where a built-in backbone's weights are: the data folder's own, else the package's shipped copy.

The package ships the built-in backbone's weights (fp16 safetensors, about 1.2 MB, in
``pft/assets/<folder>/``) with a ``model.json`` that records how they were made (the `pft
pretrain` recipe and command), their sha256 and the test accuracy measured with the shipped
fp16 weights. A fresh lab can fine-tune at once; `pft pretrain` still remakes them, and weights
it installs into the data folder (``models/<name>/model.safetensors``) take precedence.

Torch-free: the launcher asks whether pre-training is needed before anything imports torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from contract.layout import DataLayout
from pft.model_catalog import BUILTIN_BACKBONE

ASSETS = Path(__file__).with_name("assets")
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.json"
SHIPPED_FOLDERS = {BUILTIN_BACKBONE: "vit-tiny-fmnist"}  # built-in model -> folder in ASSETS


def shipped_folder(name: str) -> Path | None:
    """The package's folder of weights for built-in model ``name``, or None if none ship."""
    folder = SHIPPED_FOLDERS.get(name)
    if folder is None or not (ASSETS / folder / WEIGHTS_FILE).is_file():
        return None
    return ASSETS / folder


def backbone_weights(name: str, layout: DataLayout, *, use_shipped: bool = True) -> Path:
    """The weights a built-in model loads: the data folder's (a user's own `pft pretrain`) when
    present, else the shipped ones (unless ``use_shipped`` is false: ``PFT_SHIPPED_WEIGHTS=0``);
    the data folder's path when neither exists (for messages)."""
    own = layout.model_weights(name)
    if own.is_file():
        return own
    shipped = shipped_folder(name) if use_shipped else None
    return shipped / WEIGHTS_FILE if shipped is not None else own


def backbone_info(
    name: str, layout: DataLayout, *, use_shipped: bool = True
) -> dict[str, Any] | None:
    """The ``model.json`` beside the weights `backbone_weights` picks (None when absent)."""
    path = backbone_weights(name, layout, use_shipped=use_shipped).parent / INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def weights_available(name: str, layout: DataLayout, *, use_shipped: bool = True) -> bool:
    return backbone_weights(name, layout, use_shipped=use_shipped).is_file()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

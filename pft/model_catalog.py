"""The model catalogue and unit-map shape tables (torch-free).

A model is a timm architecture name (optionally with a pretrained tag, e.g.
``vit_base_patch16_224.augreg_in21k``) or a built-in ``pft/...`` model, plus optional timm
keyword overrides for small test models. Parameter shapes come from shape tables shipped in
``pft/model_shapes/`` (written by ``python -m pft.model_factory --write-shipped``) or cached at
run time in the data folder, so the backend can preview unit maps without torch. Computing a
missing table needs torch: callers that have it pass `pft.model_factory.compute_shape_table`
to `unit_map_for` (this module never imports the factory, which imports it).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pft.errors import PftError
from pft.paths import shapes_cache_dir
from pft.units import UnitMap, build_unit_map

# timm keyword overrides a job may set (small models for tests and CPU demos).
ALLOWED_OVERRIDES = (
    "img_size",
    "patch_size",
    "depth",
    "embed_dim",
    "num_heads",
    "in_chans",
    "mlp_ratio",
    "depths",  # hierarchical models (Swin, ConvNeXt): blocks per stage
    "dims",  # ConvNeXt: channels per stage
    "window_size",
    "drop_path_rate",
    "drop_rate",
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    timm_name: str  # architecture (+ optional pretrained tag) handed to timm.create_model
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    source: str = "hub"  # "hub": timm pretrained weights; "builtin": `pft pretrain`; "random"


BUILTIN_BACKBONE = "pft/vit-tiny-fmnist"
TEST_MODEL = "pft/vit-micro"

CATALOG: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            BUILTIN_BACKBONE,
            "vit_tiny_patch16_224",
            "Built-in 12-block ViT (0.6M params) pre-trained by `pft pretrain` on Fashion-MNIST "
            "classes 0-4; works offline",
            dict(img_size=28, patch_size=4, depth=12, embed_dim=64, num_heads=4, in_chans=1),
            source="builtin",
        ),
        ModelSpec(
            TEST_MODEL,
            "vit_tiny_patch16_224",
            "Tiny random-init 4-block ViT for tests and smoke runs (16x16 inputs)",
            dict(img_size=16, patch_size=4, depth=4, embed_dim=32, num_heads=2, in_chans=1),
            source="random",
        ),
        ModelSpec(
            "vit_base_patch16_224.augreg_in21k",
            "vit_base_patch16_224.augreg_in21k",
            "ViT-B/16, ImageNet-21k (the paper's main model)",
        ),
        ModelSpec(
            "vit_small_patch16_224.augreg_in21k",
            "vit_small_patch16_224.augreg_in21k",
            "ViT-S/16, ImageNet-21k",
        ),
        ModelSpec(
            "vit_tiny_patch16_224.augreg_in21k",
            "vit_tiny_patch16_224.augreg_in21k",
            "ViT-Ti/16, ImageNet-21k",
        ),
        ModelSpec(
            "vit_large_patch16_224.augreg_in21k",
            "vit_large_patch16_224.augreg_in21k",
            "ViT-L/16, ImageNet-21k",
        ),
        ModelSpec(
            "deit_small_patch16_224.fb_in1k",
            "deit_small_patch16_224.fb_in1k",
            "DeiT-S, ImageNet-1k",
        ),
        ModelSpec(
            "deit_base_patch16_224.fb_in1k", "deit_base_patch16_224.fb_in1k", "DeiT-B, ImageNet-1k"
        ),
        ModelSpec(
            "swin_tiny_patch4_window7_224.ms_in1k",
            "swin_tiny_patch4_window7_224.ms_in1k",
            "Swin-T, ImageNet-1k (4 stages: 8 groups)",
        ),
        ModelSpec(
            "swin_base_patch4_window7_224.ms_in22k",
            "swin_base_patch4_window7_224.ms_in22k",
            "Swin-B, ImageNet-22k (the paper's hierarchical model)",
        ),
        ModelSpec(
            "convnext_base.fb_in22k",
            "convnext_base.fb_in22k",
            "ConvNeXt-B, ImageNet-22k (the paper's convolutional model; one BLOCK unit per "
            "block, 4 stage groups)",
        ),
    ]
}


@cache
def timm_names() -> frozenset[str]:
    """Every timm architecture and architecture.tag name known when pft was released."""
    text = resources.files("pft").joinpath("model_shapes", "timm_models.txt").read_text()
    return frozenset(line for line in text.splitlines() if line)


def architecture(timm_name: str) -> str:
    return timm_name.split(".", 1)[0]


def get_spec(name: str, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """The spec for a catalogue name or any timm name; raises PftError with close matches."""
    bad = sorted(set(overrides or {}) - set(ALLOWED_OVERRIDES))
    if bad:
        raise PftError(
            f"model override {bad[0]!r} is not accepted; accepted: " + ", ".join(ALLOWED_OVERRIDES)
        )
    if name in CATALOG:
        spec = CATALOG[name]
        if overrides:
            spec = ModelSpec(
                spec.name,
                spec.timm_name,
                spec.description,
                {**spec.overrides, **overrides},
                spec.source,
            )
        return spec
    if name in timm_names() or architecture(name) in timm_names():
        return ModelSpec(name, name, f"timm model {name}", dict(overrides or {}))
    close = difflib.get_close_matches(name, list(CATALOG) + sorted(timm_names()), n=3)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise PftError(
        f"unknown model {name!r}{hint}; accepted: {', '.join(CATALOG)} or any timm model name"
    )


def _name_default(arch: str, pattern: str) -> int | None:
    m = re.search(pattern, arch)
    return int(m[1]) if m else None


def check_overrides(spec: ModelSpec) -> None:
    """Torch-free sanity checks of timm overrides, so impossible models fail at the boundary.

    Values not overridden come from the architecture name where it says them
    (``vit_base_patch16_224``: patch 16, image 224).
    """
    arch = architecture(spec.timm_name)
    o = spec.overrides
    img = o.get("img_size", _name_default(arch, r"_(\d+)$"))
    patch = o.get("patch_size", _name_default(arch, r"patch(\d+)"))
    if img is not None and patch is not None and (patch > img or img % patch):
        raise PftError(
            f"model_overrides: img_size {img} must be a multiple of patch_size {patch} "
            "(and at least as large)"
        )
    dim, heads = o.get("embed_dim"), o.get("num_heads")
    if isinstance(dim, int) and isinstance(heads, int) and dim % heads:
        raise PftError(f"model_overrides: embed_dim {dim} must be divisible by num_heads {heads}")
    ratio = o.get("mlp_ratio")
    if ratio is not None and isinstance(dim, int) and int(dim * ratio) < 1:
        raise PftError(f"model_overrides: mlp_ratio {ratio} leaves the MLP with no hidden units")


def shape_key(spec: ModelSpec) -> str:
    """A file-name-safe key for an architecture plus overrides (the tag does not change shapes)."""
    arch = architecture(spec.timm_name)
    if not spec.overrides:
        return arch
    blob = json.dumps(spec.overrides, sort_keys=True)
    return f"{arch}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _shipped_table(key: str) -> dict | None:
    path = resources.files("pft").joinpath("model_shapes", f"{key}.json")
    return json.loads(path.read_text()) if path.is_file() else None


def _cached_table(key: str) -> dict | None:
    path = shapes_cache_dir() / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_cached_table(spec: ModelSpec, table: dict, directory: Path | None = None) -> Path:
    """Stores a shape table (from `pft.model_factory.compute_shape_table`) for torch-free
    lookups."""
    directory = directory or shapes_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{shape_key(spec)}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=0))
    tmp.replace(path)
    return path


def shape_table(spec: ModelSpec) -> dict | None:
    """The shape table for a spec, from the shipped tables or the data-folder cache."""
    key = shape_key(spec)
    return _shipped_table(key) or _cached_table(key)


def named_shapes_from_table(table: dict, num_classes: int) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter shapes for a ``num_classes`` head (tables store the body and a 1-class head)."""
    out = [(n, tuple(s)) for n, s in table["body"]]
    for name, shape in table["head"]:
        out.append((name, (num_classes, *shape[1:])))
    return out


def unit_map_for(
    name: str,
    num_classes: int,
    overrides: dict[str, Any] | None = None,
    *,
    compute: Callable[[ModelSpec], dict] | None = None,
) -> UnitMap:
    """The unit map of a model without loading weights.

    Uses shipped or cached shape tables; when none exists, ``compute`` (with torch:
    `pft.model_factory.compute_shape_table`) builds one on the meta device and it is cached.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise PftError(f"num_classes must be a positive integer, got {num_classes!r}")
    spec = get_spec(name, overrides)
    table = shape_table(spec)
    if table is None:
        if not compute:
            raise LookupError(
                f"no shape table for {name!r} yet; it is computed the first time a worker or "
                f"`pft units {name}` loads the model"
            )
        table = compute(spec)
        write_cached_table(spec, table)
    return build_unit_map(
        named_shapes_from_table(table, num_classes), model=name, num_classes=num_classes
    )

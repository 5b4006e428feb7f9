"""Builds timm models from catalogue specs: pre-trained weights, built-in backbones, meta shapes.

python -m pft.model_factory --write-shipped   # regenerates pft/model_shapes/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from pft.errors import PftError
from pft.model_catalog import CATALOG, ModelSpec, get_spec, write_cached_table
from pft.paths import layout

BASE_SEED = 0  # random-init weights are a pure function of the spec, so deltas can be rebuilt


def _create(spec: ModelSpec, num_classes: int, pretrained: bool, **extra: Any) -> nn.Module:
    # A private RNG stream: the caller's seeding is untouched and random weights are repeatable.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_SEED)
        return timm.create_model(
            spec.timm_name,
            pretrained=pretrained,
            num_classes=num_classes,
            **spec.overrides,
            **extra,
        )


def compute_shape_table(spec: ModelSpec) -> dict:
    """Parameter shapes of a spec, built on the meta device (no memory for weights)."""
    with torch.device("meta"):
        body = _create(spec, 0, pretrained=False)
        one = _create(spec, 1, pretrained=False)
    body_names = dict(body.named_parameters())
    head = [(n, list(p.shape)) for n, p in one.named_parameters() if n not in body_names]
    return {
        "timm_name": spec.timm_name,
        "overrides": spec.overrides,
        "body": [(n, list(p.shape)) for n, p in body.named_parameters()],
        "head": head,
    }


def builtin_weights_path(name: str) -> Path:
    """Where `pft pretrain` installs a built-in model's weights (the data folder)."""
    return layout().model_weights(name)


def builtin_weights(name: str) -> Path:
    """The weights a built-in model loads: the data folder's, else the package's shipped copy
    (`pft.shipped`)."""
    from pft.paths import use_shipped_weights
    from pft.shipped import backbone_weights

    return backbone_weights(name, layout(), use_shipped=use_shipped_weights())


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model with a fresh ``num_classes`` head.

    ``pretrained=True`` loads hub weights for timm names (a clear error naming the model when
    the network is unreachable) or the built-in models' weights (the data folder's from `pft
    pretrain`, else the shipped ones; fp16 files load into the fp32 model).
    """
    spec = get_spec(name, overrides)
    if spec.source == "builtin" and pretrained:
        from safetensors.torch import load_file

        path = builtin_weights(spec.name)
        if not path.is_file():
            raise PftError(
                f"built-in model {spec.name!r} is not pre-trained yet: run `pft pretrain`"
                f" (expected {path})"
            )
        model = _create(spec, num_classes, pretrained=False)
        state = load_file(path)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise PftError(f"weights at {path} do not fit {spec.name!r}; re-run `pft pretrain`")
        return model
    if spec.source in ("builtin", "random") or not pretrained:
        return _create(spec, num_classes, pretrained=False)
    try:
        return _create(spec, num_classes, pretrained=True)
    except (OSError, RuntimeError) as exc:  # hub unreachable, no weights for this tag
        raise PftError(
            f"could not load pre-trained weights for {spec.name!r} ({type(exc).__name__}: {exc}); "
            "check the network, or use pretrained=false to train from random weights"
        ) from exc


def check_model(name: str, num_classes: int = 100) -> dict[str, Any]:
    """Whether ``name`` maps onto units, built on the meta device: ``{"model", "mapped",
    "reason", "depth", "groups": {group: units}, "total_params", "tuned_params": {strategy:
    count}, "not_applicable": [strategy]}``; a refused model has ``reason`` and no counts."""
    from pft.model_catalog import named_shapes_from_table
    from pft.model_picker import unit_map_summary
    from pft.units import build_unit_map

    row: dict[str, Any] = {"model": name, "mapped": False, "reason": None}
    try:
        table = compute_shape_table(get_spec(name))
        um = build_unit_map(
            named_shapes_from_table(table, num_classes), model=name, num_classes=num_classes
        )
    except PftError as exc:
        return row | {"reason": str(exc)}
    except Exception as exc:  # timm cannot build it on the meta device
        return row | {"reason": f"timm could not build it ({type(exc).__name__}: {exc})"}
    return row | unit_map_summary(um)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-shipped", action="store_true")
    args = parser.parse_args()
    if args.write_shipped:
        out = Path(__file__).parent / "model_shapes"
        for spec in CATALOG.values():
            print(write_cached_table(spec, compute_shape_table(spec), out))
        names = sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))
        (out / "timm_models.txt").write_text("\n".join(names) + "\n")


if __name__ == "__main__":
    main()

"""Read-only views of model weights that load one tensor at a time.

Angles and soups stream over checkpoints instead of holding whole models: a safetensors file
is opened lazily, and a delta checkpoint is seen through an overlay on its pre-trained base.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pft.errors import PftError


class SafetensorsWeights(Mapping[str, torch.Tensor]):
    """A lazy mapping over a safetensors file: each access reads one tensor."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise PftError(f"no checkpoint at {self.path}")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self._keys = list(f.keys())
                self.metadata: dict[str, str] = dict(f.metadata() or {})
                self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in self._keys}
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise PftError(f"{self.path} is not a readable safetensors file ({exc})") from exc

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._shapes:
            raise KeyError(name)
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def over(self, base: Mapping[str, torch.Tensor]) -> Overlay:
        return Overlay(self, base)


class Overlay(Mapping[str, torch.Tensor]):
    """``delta`` on top of ``base``: the tensors a run tuned, the pre-trained value elsewhere."""

    def __init__(self, delta: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]):
        self.delta, self.base = delta, base

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.delta[name] if name in self.delta else self.base[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.delta
        yield from (k for k in self.base if k not in self.delta)

    def __len__(self) -> int:
        return len(set(self.delta) | set(self.base))


def shape_of(weights: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    """A tensor's shape, without reading it where the mapping knows shapes."""
    if isinstance(weights, SafetensorsWeights):
        return weights.shape(name)
    if isinstance(weights, Overlay):
        return shape_of(weights.delta if name in weights.delta else weights.base, name)
    return tuple(weights[name].shape)


def open_weights(path: Path) -> tuple[SafetensorsWeights, dict[str, Any]]:
    """A lazy view of a safetensors file and its metadata (a delta's structured values decoded
    by `pft.checkpoint.decode_metadata`, the one decoder)."""
    from pft.checkpoint import decode_metadata

    weights = SafetensorsWeights(path)
    return weights, decode_metadata(weights.metadata)


def pretrained_weights_for(
    pretrained: str, finetuned: SafetensorsWeights, weights_file: Path | None = None
) -> Mapping[str, torch.Tensor]:
    """Pre-trained weights named on the command line: a safetensors file or a model name."""
    if Path(pretrained).suffix == ".safetensors" or Path(pretrained).is_file():
        return SafetensorsWeights(Path(pretrained))
    if weights_file is not None:
        return SafetensorsWeights(weights_file)
    from pft.checkpoint import decode_metadata

    meta = decode_metadata(finetuned.metadata)
    num_classes = 1
    for head in ("head.weight", "head.fc.weight"):
        if head in finetuned:
            num_classes = finetuned.shape(head)[0]
    from pft.base_model import build_pretrained

    model = build_pretrained(
        pretrained,
        num_classes,
        pretrained=meta.get("pretrained", True),
        overrides=meta.get("model_overrides") or None,
    )
    return {k: v.detach() for k, v in model.state_dict().items()}

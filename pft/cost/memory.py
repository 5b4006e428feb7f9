"""Peak training memory without a calibration: the analytic side of `pft.cost.predict`'s
memory formula, from a ViT's shapes (and the timm overrides a request adds), torch-free.

The API checks every fine-tuning request with it before queueing (`backend.submit`): a job
whose estimate exceeds the largest worker's memory is refused with the estimate, instead of
being killed by the kernel on every attempt. Per image, one trained block saves about
``4 * N * (9 * D + 2 * hidden)`` bytes for backward (N tokens, D width, fp32; measured within 5%
of what autograd saves on the built-in and test backbones by `pft.cost.calibrate`); the stem
``8 * N * D``, the input ``4 * C * H * W``. Parameters: ``4 * D * D + 2 * D * hidden`` per
block plus biases and norms, the patch embedding and the position embedding. The prefix cache
is left out: it has its own budget (``hparams.prefix_cache_mb``) and spills to a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pft.cost.predict import MB
from pft.units import UnitMap


@dataclass(frozen=True)
class VitDims:
    """The sizes that memory depends on."""

    depth: int
    dim: int  # D
    hidden: int  # MLP width
    patches: int  # image tokens
    prefix_tokens: int  # class and register tokens
    channels: int
    patch: int  # patch side in pixels
    num_classes: int

    @property
    def tokens(self) -> int:
        return self.patches + self.prefix_tokens

    @property
    def params(self) -> int:
        d, h = self.dim, self.hidden
        block = 4 * d * d + 2 * d * h + h + 9 * d  # qkv, proj, fc1, fc2, biases, two norms
        stem = self.channels * self.patch**2 * d + d + self.tokens * d + self.prefix_tokens * d
        return self.depth * block + stem + 2 * d + (d + 1) * self.num_classes

    def block_activation(self) -> int:
        return 4 * self.tokens * (9 * self.dim + 2 * self.hidden)

    def input_bytes(self) -> int:
        return 4 * self.channels * self.patches * self.patch**2


def vit_dims(unit_map: UnitMap) -> VitDims | None:
    """The dims of a plain ViT's unit map (None for other families: no ``pos_embed`` and
    ``patch_embed.proj``)."""
    shapes = unit_map.shapes
    pos, proj = shapes.get("pos_embed"), shapes.get("patch_embed.proj.weight")
    if not pos or len(pos) != 3 or not proj or len(proj) != 4:
        return None
    fc1 = next((s for n, s in shapes.items() if n.endswith("mlp.fc1.weight")), None)
    extra = (1 if "cls_token" in shapes else 0) + (
        shapes["reg_token"][1] if "reg_token" in shapes else 0
    )
    tokens, dim = int(pos[1]), int(pos[2])
    patches = tokens - extra if tokens > extra else tokens
    return VitDims(
        depth=unit_map.depth,
        dim=dim,
        hidden=int(fc1[0]) if fc1 else 4 * dim,
        patches=patches,
        prefix_tokens=tokens - patches,
        channels=int(proj[1]),
        patch=int(proj[2]),
        num_classes=unit_map.num_classes,
    )


def with_overrides(dims: VitDims, base: Mapping[str, Any], overrides: Mapping[str, Any]) -> VitDims:
    """``dims`` of the model built with ``base`` overrides, rebuilt with ``overrides`` on top
    (timm's ViT keywords: img_size, patch_size, depth, embed_dim, mlp_ratio, in_chans)."""
    merged = {**base, **overrides}
    patch = int(merged.get("patch_size", dims.patch))
    side = int(merged.get("img_size", round((dims.patches**0.5) * dims.patch)))
    dim = int(merged.get("embed_dim", dims.dim))
    ratio = float(merged.get("mlp_ratio", dims.hidden / dims.dim))
    return replace(
        dims,
        depth=int(merged.get("depth", dims.depth)),
        dim=dim,
        hidden=int(dim * ratio),
        patches=max(1, side // max(patch, 1)) ** 2,
        channels=int(merged.get("in_chans", dims.channels)),
        patch=patch,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    weights_mb: float  # fp32 parameters
    optimizer_mb: float  # gradients and AdamW state of the tuned ones
    activations_mb: float  # saved for backward at the batch
    batch_size: int

    @property
    def peak_mb(self) -> float:
        return self.weights_mb + self.optimizer_mb + self.activations_mb

    def largest_batch(self, limit_mb: float) -> int:
        """The largest batch whose estimate stays within ``limit_mb`` (0: none)."""
        per_image = self.activations_mb / self.batch_size
        room = limit_mb - self.weights_mb - self.optimizer_mb
        return max(0, int(room // per_image)) if per_image > 0 else 0

    def describe(self) -> str:
        return (
            f"{self.peak_mb:,.0f} MB (parameters {self.weights_mb:,.0f} MB, gradients and AdamW "
            f"state {self.optimizer_mb:,.0f} MB, activations {self.activations_mb:,.0f} MB at "
            f"batch {self.batch_size})"
        )


def estimate(
    dims: VitDims, *, tuned_fraction: float, trained_blocks_fraction: float, batch_size: int
) -> MemoryEstimate:
    """Peak training memory of ``dims`` with ``tuned_fraction`` of the parameters tuned and
    ``trained_blocks_fraction`` of the blocks at or above the lowest tuned one."""
    params = dims.params
    trained = round(trained_blocks_fraction * dims.depth)
    per_image = (
        dims.input_bytes()
        + dims.block_activation() * (trained + (1 if trained < dims.depth else 0))
        + 8 * dims.tokens * dims.dim
        + 8 * dims.dim
    )
    return MemoryEstimate(
        weights_mb=4 * params / MB,
        optimizer_mb=12 * params * tuned_fraction / MB,
        activations_mb=batch_size * per_image / MB,
        batch_size=batch_size,
    )


def host_memory_mb() -> float | None:
    """This machine's physical memory (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    except (ValueError, OSError, AttributeError):
        return None

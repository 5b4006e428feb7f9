"""Batched preprocessing on the training device: uint8 images -> normalised model inputs.

The data config comes from timm (`resolve_model_data_config`), corrected to the input size and
channels the model was actually built with (timm keyword overrides change them). Grayscale
images are repeated to three channels for RGB models; RGB images become luminance for
one-channel models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pft.shifts import apply_shift


def data_config_for(model: nn.Module) -> dict[str, Any]:
    """``{"input_size": [C, H, W], "mean": [...], "std": [...], "interpolation": str}``."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    channels = int(getattr(model, "in_chans", None) or cfg["input_size"][0])
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or cfg["input_size"][1:]
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if len(mean) != channels:  # e.g. an RGB pretrained cfg on a 1-channel model
        mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    interp = cfg.get("interpolation", "bilinear")
    return {
        "input_size": [channels, int(size[0]), int(size[1])],
        "mean": mean,
        "std": std,
        "interpolation": interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear",
    }


def prepare(
    images: torch.Tensor,
    data_config: dict[str, Any],
    device: torch.device | str,
    *,
    augment: torch.Generator | None = None,
    hflip: bool = False,
    shift: tuple[str, int] | None = None,
    shift_seed: int = 0,
) -> torch.Tensor:
    """(B, C, h, w) uint8 -> (B, C', H, W) float normalised on ``device``.

    ``augment`` (a CPU generator) enables random translation by up to 1/8 of the side (and
    horizontal flips when ``hflip``); ``shift`` (name, severity) applies a corruption in pixel
    space before normalising, its noise seeded by ``shift_seed`` (the batch index).
    """
    channels, height, width = data_config["input_size"]
    if augment is not None:
        images = _random_translate(images, augment, hflip)
    x = images.to(device, non_blocking=True).float().div_(255)
    if x.shape[1] != channels:
        x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else _luma(x)
    if tuple(x.shape[-2:]) != (height, width):
        mode = data_config["interpolation"]
        x = F.interpolate(
            x,
            size=(height, width),
            mode=mode,
            antialias=mode != "nearest",
            align_corners=False if mode != "nearest" else None,
        )
        x = x.clamp_(0, 1)
    if shift is not None:
        x = apply_shift(x, *shift, seed=shift_seed)
    mean = torch.tensor(data_config["mean"], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"], device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1, keepdim=True)


def _random_translate(images: torch.Tensor, g: torch.Generator, hflip: bool) -> torch.Tensor:
    """Pad-and-crop by up to H/8 pixels per image (zero padding), plus optional flips."""
    b, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    iy = oy[:, None] + torch.arange(h)  # (B, H)
    ix = ox[:, None] + torch.arange(w)  # (B, W)
    if hflip:
        flip = torch.rand(b, generator=g) < 0.5
        ix = torch.where(flip[:, None], ix.flip(1), ix)
    out = padded[torch.arange(b)[:, None, None], :, iy[:, :, None], ix[:, None, :]]  # (B,H,W,C)
    return out.permute(0, 3, 1, 2).contiguous()

"""Distribution-shift corruptions for out-of-distribution evaluation, as batched tensor ops.

Each corruption maps a float batch in [0, 1] of shape (B, C, H, W) to a corrupted batch at one of
five fixed severities (names, severities and which function is which:
`pft.dataset_catalog.SHIFTS`). They are
deterministic: the noise is drawn from a generator seeded by the severity and the batch index,
so every evaluation of a checkpoint sees the same corrupted test set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pft.dataset_catalog import SHIFTS, parse_shift
from pft.lazy import load_function

_NOISE_STD = (0.04, 0.08, 0.12, 0.18, 0.26)
_BLUR_SIGMA = (0.4, 0.6, 0.8, 1.1, 1.5)  # in pixels per 32 pixels of image side
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
_ROTATION_DEG = (10.0, 20.0, 30.0, 40.0, 50.0)


def apply_shift(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupts a batch; ``seed`` varies the noise between batches (use the batch index)."""
    parse_shift(f"{name}:{severity}")  # validates
    return load_function(SHIFTS[name].apply)(x, severity - 1, seed)


def gaussian_noise(x: torch.Tensor, i: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(1000 * (i + 1) + seed)
    noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    return (x + noise * _NOISE_STD[i]).clamp(0, 1)


def blur(x: torch.Tensor, i: int, seed: int) -> torch.Tensor:
    return _gaussian_blur(x, _BLUR_SIGMA[i] * x.shape[-1] / 32)


def contrast(x: torch.Tensor, i: int, seed: int) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * _CONTRAST[i] + mean).clamp(0, 1)


def rotation(x: torch.Tensor, i: int, seed: int) -> torch.Tensor:
    return _rotate(x, _ROTATION_DEG[i])


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # separable: rows
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # then columns


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotates image i by +degrees (even i) or -degrees (odd i) about the centre; zero fill."""
    b = x.shape[0]
    sign = torch.where(torch.arange(b, device=x.device) % 2 == 0, 1.0, -1.0)
    theta = sign * math.radians(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    affine = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(affine.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

"""Distribution-shift corruptions: shapes, ranges, determinism and monotone severity."""

from __future__ import annotations

import pytest
import torch

from pft.dataset_catalog import SEVERITIES, SHIFTS
from pft.errors import PftError
from pft.shifts import apply_shift


@pytest.fixture
def batch():
    # smooth images (upsampled 4x4 noise) so that blur and rotation change them measurably
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(4, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=32, mode="bilinear").clamp(0, 1)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_shift_keeps_shape_and_range_and_is_deterministic(batch, name):
    out = apply_shift(batch, name, 3)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, apply_shift(batch, name, 3))
    assert not torch.allclose(out, batch)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_severity_increases_the_change(batch, name):
    dist = [float((apply_shift(batch, name, s) - batch).abs().mean()) for s in SEVERITIES]
    assert dist == sorted(dist) and dist[0] < dist[-1]


def test_noise_varies_with_batch_seed(batch):
    a = apply_shift(batch, "gaussian_noise", 2, seed=0)
    assert not torch.equal(a, apply_shift(batch, "gaussian_noise", 2, seed=1))


def test_contrast_keeps_the_mean_and_rotation_alternates(batch):
    out = apply_shift(batch, "contrast", 5)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), batch.mean(dim=(1, 2, 3)), atol=0.02)
    same = batch[:1].expand(2, -1, -1, -1)
    rotated = apply_shift(same, "rotation", 2)
    assert not torch.allclose(rotated[0], rotated[1])  # +20 and -20 degrees


def test_unknown_shift_or_severity(batch):
    with pytest.raises(PftError, match="close matches: blur"):
        apply_shift(batch, "blurr", 1)
    with pytest.raises(PftError, match="severity"):
        apply_shift(batch, "blur", 9)

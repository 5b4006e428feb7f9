"""Masked soup (new here, for partial fine-tuning): each tensor is averaged only over the
ingredients that tuned it; tensors no ingredient tuned keep their pre-trained value."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from pft.soups.averaging import Merged, State, _average


def masked_soup(ingredients: Iterable[State], base: State) -> dict[str, torch.Tensor]:
    """Each tensor averaged over the ingredients that tuned it; others stay pre-trained."""
    return _average(ingredients, base, masked=True)


def merge(ingredients: Sequence[State], base: State, **_: Any) -> Merged:
    return Merged(masked_soup(ingredients, base), list(range(len(ingredients))))

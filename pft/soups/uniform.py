"""Uniform soup (Wortsman et al. 2022): the average of all ingredients.

A plain uniform soup of partial runs pulls every tuned tensor part-way back to its pre-trained
value (ingredients that did not tune a tensor contribute ``base``); `pft.soups.masked` does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from pft.soups.averaging import Merged, State, _average


def uniform_soup(
    ingredients: Iterable[State], base: State | None = None
) -> dict[str, torch.Tensor]:
    """The average of all ingredients (as a delta over ``base`` when one is given)."""
    return _average(ingredients, base, masked=False)


def merge(ingredients: Sequence[State], base: State, **_: Any) -> Merged:
    return Merged(uniform_soup(ingredients, base), list(range(len(ingredients))))

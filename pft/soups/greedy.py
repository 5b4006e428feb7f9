"""Greedy soup (Wortsman et al. 2022, Recipe 1): sort ingredients by held-out score, start
from the best, add each next one only if the soup's held-out score strictly rises; one pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pft.errors import PftError
from pft.soups.averaging import Merged, State
from pft.soups.uniform import uniform_soup


@dataclass
class GreedyStep:
    ingredient: int  # index into the ingredients given
    individual_score: float
    candidate_score: float  # held-out score of the soup with this ingredient added
    accepted: bool


@dataclass
class GreedyResult:
    soup: dict[str, torch.Tensor]
    selected: list[int]
    score: float
    trace: list[GreedyStep] = field(default_factory=list)

    def trace_dicts(self) -> list[dict]:
        return [vars(s) | {"order": i} for i, s in enumerate(self.trace)]


def greedy_soup(
    ingredients: Sequence[State],
    score: Callable[[State], float],
    base: State | None = None,
    individual_scores: Sequence[float] | None = None,
) -> GreedyResult:
    """Greedy soup (Wortsman et al. 2022, Recipe 1) over ``ingredients``.

    ``score`` evaluates a soup (a delta over ``base``, or a full state) on the held-out split,
    higher is better. ``individual_scores`` skips re-scoring the ingredients alone.
    Ties do not count as improvements: the score must strictly rise.
    """
    if not ingredients:
        raise PftError("a soup needs at least one ingredient")
    singles = (
        list(individual_scores)
        if individual_scores is not None
        else [score(d) for d in ingredients]
    )
    order = sorted(range(len(ingredients)), key=lambda i: -singles[i])
    best = order[0]
    selected = [best]
    soup = uniform_soup([ingredients[best]], base)
    current = singles[best]
    trace = [GreedyStep(best, singles[best], current, True)]
    for i in order[1:]:
        candidate = uniform_soup([ingredients[j] for j in [*selected, i]], base)
        cand_score = score(candidate)
        accepted = cand_score > current
        trace.append(GreedyStep(i, singles[i], cand_score, accepted))
        if accepted:
            selected.append(i)
            soup, current = candidate, cand_score
    return GreedyResult(soup=soup, selected=selected, score=current, trace=trace)


def merge(
    ingredients: Sequence[State],
    base: State,
    *,
    score: Callable[[State], float] | None = None,
    heldout_scores: Sequence[float] | None = None,
    **_: Any,
) -> Merged:
    if score is None:
        raise PftError("a greedy soup scores candidates on a dataset's held-out split")
    result = greedy_soup(ingredients, score, base, heldout_scores)
    return Merged(result.soup, result.selected, result.trace_dicts())

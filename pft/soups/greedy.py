"""Greedy soup (Wortsman et al. 2022, Recipe 1): sort ingredients by held-out score, start
from the best, add each next one only if the soup's held-out score strictly rises; one pass.

Choice for choice the reference implementation (mlfoundations/model-soups, ``main.py``): the
ingredients are sorted by held-out score ascending with a stable sort and the list reversed, so
ingredients with tied scores are tried in reverse input order; the candidate is the running
mean ``soup * n/(n+1) + new/(n+1)``, not a re-average of every kept ingredient. Ingredients are
read one at a time (lazy mappings stay on disk): memory holds the soup, one candidate and one
ingredient tensor, whatever their number.
"""

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
    order = reference_order(singles)
    best = order[0]
    selected = [best]
    first = ingredients[best]
    soup = uniform_soup([first], base) if base is not None else {k: first[k].clone() for k in first}
    current = singles[best]
    trace = [GreedyStep(best, singles[best], current, True)]
    for i in order[1:]:
        candidate = running_mean(soup, len(selected), ingredients[i], base, f"ingredient {i}")
        cand_score = score(candidate)
        accepted = cand_score > current
        trace.append(GreedyStep(i, singles[i], cand_score, accepted))
        if accepted:
            selected.append(i)
            soup, current = candidate, cand_score
    return GreedyResult(soup=soup, selected=selected, score=current, trace=trace)


def reference_order(scores: Sequence[float]) -> list[int]:
    """Indices best first, as model-soups orders them: a stable ascending sort, reversed (tied
    scores come out in reverse input order)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    order.reverse()
    return order


def running_mean(
    soup: State, n: int, new: State, base: State | None, where: str
) -> dict[str, torch.Tensor]:
    """The mean of ``n`` ingredients (``soup``) and ``new``: ``soup * n/(n+1) + new/(n+1)``.
    With a ``base``, a tensor one side did not tune counts at its pre-trained value."""
    names = list(soup) + [k for k in new if k not in soup]
    if base is None and set(new) != set(soup):
        odd = sorted(set(new) ^ set(soup))[0]
        raise PftError(f"{where}: tensor {odd!r} is not in every ingredient")
    out = {}
    for name in names:
        mine = soup[name] if name in soup else base[name]
        theirs = new[name] if name in new else base[name]
        if base is not None and name not in base:
            raise PftError(f"{where}: tensor {name!r} does not exist in the pre-trained model")
        if tuple(mine.shape) != tuple(theirs.shape):
            raise PftError(
                f"{where}: tensor {name!r} has shape {tuple(theirs.shape)}, the soup "
                f"{tuple(mine.shape)} (a different model or head size)"
            )
        dtype = base[name].dtype if base is not None else mine.dtype
        mixed = mine.to(torch.float64) * (n / (n + 1.0)) + theirs.to(torch.float64) * (
            1.0 / (n + 1)
        )
        out[name] = mixed.to(dtype)
    return out


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

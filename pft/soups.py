"""Model soups: weight averages of models fine-tuned from one pre-trained start.

- Uniform soup (Wortsman et al. 2022): the average of all ingredients.
- Greedy soup (Wortsman et al. 2022): sort ingredients by held-out score, start from the best,
  add each next one only if the soup's held-out score strictly rises; one pass.
- Masked soup (new here, for partial fine-tuning): each tensor is averaged only over the
  ingredients that tuned it; tensors no ingredient tuned keep their pre-trained value. A plain
  uniform soup of partial runs would instead pull every tuned tensor part-way back to its
  pre-trained value.

Ingredients are *deltas*: mappings holding only the tensors a run tuned (a full fine-tuning
delta holds every tensor). ``base`` is the pre-trained state dict with the task's head shape,
which supplies every tensor an ingredient did not tune. Ingredients are read one at a time:
memory holds the running sum and one ingredient, whatever their number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pft.errors import PftError

State = Mapping[str, torch.Tensor]


def _check_tensor(name: str, value: torch.Tensor, base: State | None, where: str) -> None:
    if base is None:
        return
    if name not in base:
        raise PftError(f"{where}: tensor {name!r} does not exist in the pre-trained model")
    if tuple(base[name].shape) != tuple(value.shape):
        raise PftError(
            f"{where}: tensor {name!r} has shape {tuple(value.shape)}, the pre-trained model "
            f"{tuple(base[name].shape)} (a different model or head size)"
        )


def _average(
    ingredients: Iterable[State], base: State | None, masked: bool
) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    n = 0
    seen_keys: set[str] | None = None
    for i, delta in enumerate(ingredients):
        n += 1
        if base is None:  # full state dicts: every ingredient must hold the same tensors
            keys = set(delta)
            if seen_keys is not None and keys != seen_keys:
                odd = sorted(keys ^ seen_keys)[0]
                raise PftError(f"ingredient {i}: tensor {odd!r} is not in every ingredient")
            seen_keys = keys
        for name, value in delta.items():
            _check_tensor(name, value, base, f"ingredient {i}")
            if name in sums and sums[name].shape != value.shape:
                raise PftError(
                    f"ingredient {i}: tensor {name!r} has shape {tuple(value.shape)}, "
                    f"other ingredients {tuple(sums[name].shape)}"
                )
            if name not in sums:
                # For a uniform soup, earlier ingredients that did not tune this tensor
                # contributed its pre-trained value.
                start = 0 if masked else i
                sums[name] = value.detach().to(torch.float64).clone()
                if start and base is not None:
                    sums[name] += start * base[name].to(torch.float64)
                counts[name] = 1 if masked else i + 1
            else:
                sums[name] += value.detach().to(torch.float64)
                counts[name] += 1
        if not masked and base is not None:
            for name in sums.keys() - delta.keys():
                sums[name] += base[name].to(torch.float64)
                counts[name] += 1
    if n == 0:
        raise PftError("a soup needs at least one ingredient")
    dtype = {k: v.dtype for k, v in (base or {}).items() if k in sums}
    return {k: (s / counts[k]).to(dtype.get(k, torch.float32)) for k, s in sums.items()}


def uniform_soup(
    ingredients: Iterable[State], base: State | None = None
) -> dict[str, torch.Tensor]:
    """The average of all ingredients (as a delta over ``base`` when one is given)."""
    return _average(ingredients, base, masked=False)


def masked_soup(ingredients: Iterable[State], base: State) -> dict[str, torch.Tensor]:
    """Each tensor averaged over the ingredients that tuned it; others stay pre-trained."""
    return _average(ingredients, base, masked=True)


def full_state(delta: State, base: State) -> dict[str, torch.Tensor]:
    """The whole model's state: ``base`` with the delta's tensors replaced."""
    return {**base, **delta}


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

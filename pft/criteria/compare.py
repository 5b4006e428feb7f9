"""How well selection criteria agree: rank correlation and top-K overlap, with their cost.

Torch-free and pure Python. For every pair of criteria scored on one model and dataset:

- ``spearman``: Spearman's rank correlation over the units both scored: Pearson's correlation
  of their ranks, tied scores sharing the mean of the ranks they span (so it is exact with
  ties); None when one side gives every unit the same score (no ranking).
- ``topk_overlap``: the share of the units top-K selection (``criterion_topk``, as
  `pft.strategies.top_k` selects: ``min(k, |group|)`` units per group, largest scores first
  unless ``order`` is ``smallest``, ties to the earlier unit) would pick from one criterion's
  scores that it also picks from the other's, over all groups: Σ_g |A_g ∩ B_g| / Σ_g K_g.

``cost`` is each criterion's seconds as its scores record them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from pft.criteria.scores import Scores
from pft.errors import PftError
from pft.reproduce.stats import spearman as _rho
from pft.strategies import ORDERS


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho of two equally long sequences (ties: average ranks; the study's
    `pft.reproduce.stats.spearman`); None when either is constant or shorter than two."""
    rho = _rho(a, b)
    return None if math.isnan(rho) else rho


def _rows(scores: Scores | Mapping[str, Any]) -> list[tuple[str, str, float]]:
    data = scores.to_dict() if isinstance(scores, Scores) else scores
    return [(u["name"], u["group"], float(u["score"])) for u in data["units"]]


def _seconds(scores: Scores | Mapping[str, Any]) -> float:
    return scores.seconds if isinstance(scores, Scores) else float(scores.get("seconds", 0.0))


def top_k_per_group(
    rows: Sequence[tuple[str, str, float]], k: int, order: str = "largest"
) -> dict[str, set[str]]:
    """group -> the ``min(k, |group|)`` units selected, as top-K selection picks them."""
    groups: dict[str, list[tuple[int, str, float]]] = {}
    for i, (name, group, score) in enumerate(rows):
        groups.setdefault(group, []).append((i, name, score))
    sign = -1.0 if order == "largest" else 1.0
    return {
        g: {name for _, name, _ in sorted(us, key=lambda u: (sign * u[2], u[0]))[:k]}
        for g, us in groups.items()
    }


def topk_overlap(
    a: Sequence[tuple[str, str, float]],
    b: Sequence[tuple[str, str, float]],
    k: int,
    order: str = "largest",
) -> float:
    """Σ_g |A_g ∩ B_g| / Σ_g min(k, |g|) over the groups of ``a`` (rows: name, group, score)."""
    sa, sb = top_k_per_group(a, k, order), top_k_per_group(b, k, order)
    total = sum(len(units) for units in sa.values())
    return sum(len(units & sb.get(g, set())) for g, units in sa.items()) / total


def compare(
    scores_by_criterion: Mapping[str, Scores | Mapping[str, Any]], k: int, order: str = "largest"
) -> dict[str, Any]:
    """``{"pairs": [{"a", "b", "spearman", "topk_overlap"}], "cost": {name: seconds}}`` for
    every pair of criteria (in the mapping's order); scores are `Scores` or their dicts."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise PftError(f"k must be an integer >= 1, got {k!r}", field="k")
    if order not in ORDERS:
        raise PftError(f"order must be one of {', '.join(ORDERS)}, got {order!r}", field="order")
    rows = {name: _rows(s) for name, s in scores_by_criterion.items()}
    for name, r in rows.items():
        if not r:
            raise PftError(f"criterion {name!r} scored no unit", field="scores")
    pairs = []
    for a, b in combinations(rows, 2):
        units_a = {n: (g, s) for n, g, s in rows[a]}
        units_b = {n: (g, s) for n, g, s in rows[b]}
        common = [n for n, _, _ in rows[a] if n in units_b]
        if not common:
            raise PftError(f"criteria {a!r} and {b!r} scored no unit in common", field="scores")
        pairs.append(
            {
                "a": a,
                "b": b,
                "spearman": spearman(
                    [units_a[n][1] for n in common], [units_b[n][1] for n in common]
                ),
                "topk_overlap": topk_overlap(
                    [(n, *units_a[n]) for n in common], [(n, *units_b[n]) for n in common], k, order
                ),
            }
        )
    return {"pairs": pairs, "cost": {n: _seconds(s) for n, s in scores_by_criterion.items()}}

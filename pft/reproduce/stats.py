"""Small statistics for the study: mean ± spread, Spearman rank correlation, Pareto front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation (0 for a single value)
    n: int
    lo: float
    hi: float

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"88.1 ± 1.2"`` (accuracies in percent by default)."""
        if self.n == 0:
            return "–"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def spread(values: Sequence[float]) -> Spread:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Spread(math.nan, math.nan, 0, math.nan, math.nan)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return Spread(mean, std, n, min(vals), max(vals))


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            out[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN if either side is constant."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs sequences of equal length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return math.nan
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return math.nan
    return cov / math.sqrt(va * vb)


def spearman_on(a: Mapping[str, float], b: Mapping[str, float], keys: Sequence[str]) -> float:
    return spearman([a[k] for k in keys], [b[k] for k in keys])


def pairwise_spearman(vectors: Sequence[Mapping[str, float]], keys: Sequence[str]) -> list[float]:
    """Spearman ρ of every pair of rankings (e.g. the angle rankings of different seeds)."""
    return [spearman_on(a, b, keys) for a, b in combinations(vectors, 2)]


def top_k(values: Mapping[str, float], keys: Sequence[str], k: int, largest: bool) -> set[str]:
    """The k keys with the largest (or smallest) values; ties broken by key order."""
    ranked = sorted(keys, key=lambda n: (-values[n] if largest else values[n], keys.index(n)))
    return set(ranked[:k])


def overlap(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a| for two sets of equal size (1 = the same units chosen)."""
    return len(a & b) / len(a) if a else math.nan


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, score) that no other point beats: none has cost ≤ and
    score ≥ with one strict. Sorted by cost."""
    front = []
    for i, (c, s) in enumerate(points):
        dominated = any(
            (c2 <= c and s2 >= s) and (c2 < c or s2 > s)
            for j, (c2, s2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))

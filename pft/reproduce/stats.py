"""Small statistics for the study: mean ± spread, Spearman rank correlation, Pareto front,
Student-t intervals (no scipy: the incomplete beta function) and the four outcomes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any


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


# --- t-based intervals and the four outcomes -------------------------------------------------

LEVEL = 0.95  # two-sided confidence level of every interval in the study
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"
OUTCOMES = (BETTER, WORSE, EQUIVALENT, INCONCLUSIVE)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (e.g. ``t_quantile(0.975, 2)`` = 4.303)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):  # bisection: t_cdf is monotone
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """A mean (a difference, in accuracy fractions) with its t-based ``LEVEL`` interval."""

    mean: float
    lo: float
    hi: float
    n: int  # values (paired: seeds both sides share)
    sd: float = math.nan

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"+1.2 [−0.3, +2.7]"`` (points by default)."""
        if self.n == 0 or math.isnan(self.mean):
            return "–"
        if math.isinf(self.half_width):
            return f"{self.mean * scale:+.{digits}f} [–∞, +∞]"
        return (
            f"{self.mean * scale:+.{digits}f} "
            f"[{self.lo * scale:+.{digits}f}, {self.hi * scale:+.{digits}f}]"
        )


def mean_interval(values: Sequence[float], level: float = LEVEL, sd_floor: float = 0.0) -> Interval:
    """The one-sample t interval of the mean of ``values`` (infinite for a single value).

    ``sd_floor`` bounds the sample standard deviation from below: accuracies are counts of
    test images, so seeds that tie exactly say the spread is under one image, not zero."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(vals) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    sd = max(math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)), sd_floor)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def paired_interval(
    a: Mapping[Any, float], b: Mapping[Any, float], level: float = LEVEL, sd_floor: float = 0.0
) -> Interval:
    """The t interval of the mean of ``a[s] − b[s]`` over the keys (seeds) both share."""
    common = sorted(set(a) & set(b))
    return mean_interval([a[s] - b[s] for s in common], level, sd_floor)


def binomial_sd(p: float, n: int | None) -> float:
    """The sampling standard deviation of an accuracy ``p`` measured on ``n`` images (0 when
    ``n`` is unknown)."""
    if not n or math.isnan(p):
        return 0.0
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def noise_interval(diff: float, sds: Sequence[float], df: int, level: float = LEVEL) -> Interval:
    """``diff`` of two single models (soups) with a noise half-width from the seed-to-seed
    standard deviations ``sds`` of single runs: t_{df} · sqrt(Σ sd²); infinite when df < 1."""
    if df < 1 or any(math.isnan(s) for s in sds):
        return Interval(diff, -math.inf, math.inf, 1)
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(sum(s * s for s in sds))
    return Interval(diff, diff - half, diff + half, 1, math.sqrt(sum(s * s for s in sds)))


def outcome(iv: Interval, margin: float) -> str:
    """The four outcomes of a difference against the equivalence ``margin`` (fractions):
    equivalent when the whole interval lies inside ±margin (even if it excludes zero: the
    margin says up front which differences are too small to matter); otherwise better when
    it lies above zero, worse when below, inconclusive when it straddles zero."""
    if iv.n == 0 or math.isnan(iv.lo) or math.isnan(iv.hi):
        return INCONCLUSIVE
    if -margin < iv.lo and iv.hi < margin:
        return EQUIVALENT
    if iv.lo > 0:
        return BETTER
    if iv.hi < 0:
        return WORSE
    return INCONCLUSIVE

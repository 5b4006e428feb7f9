"""The study's analysis: pure functions from run records and soups to tables and verdicts.

Per dataset: a strategy table (mean ± spread over seeds at the held-out-chosen learning rate),
the learning-rate grid, the Pareto front of accuracy against tuned parameters, the stability of
the fine-tuned angle ranking across seeds, the cheap-angle agreement, and soups against their
ingredients. `verdicts` turns these into claim-by-claim statements (Ye et al. 2023).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pft.reproduce.plan import (
    ATTN_ONLY,
    BASE_STRATEGIES,
    BLOCK_HALVES,
    FFN_ONLY,
    FULL,
    GREEDY_SOUP,
    STUDY_SOUPS,
    TOPK,
    family,
)
from pft.reproduce.results import Record, choose_lrs, main_records, mean_angles, unit_order
from pft.reproduce.stats import (
    Spread,
    overlap,
    pairwise_spearman,
    pareto_front,
    spearman_on,
    spread,
    top_k,
)

Z = 2.0  # differences beyond Z standard errors count as real


@dataclass
class StrategyRow:
    label: str
    family: str
    lr: float
    tuned_params: int
    tuned_fraction: float
    test: Spread
    heldout: Spread
    shifts: dict[str, Spread]
    seconds: Spread  # wall time per run (training + evaluation)

    @property
    def shift_mean(self) -> Spread:
        """Mean accuracy over the shift sets, spread over seeds."""
        return self.shifts.get("mean", spread([]))


@dataclass
class DatasetAnalysis:
    dataset: str
    rows: list[StrategyRow]
    lr_grid: dict[str, dict[float, float]]  # label -> lr -> seed-0 held-out accuracy
    pareto: list[str]  # labels on the front (tuned params vs mean test accuracy)
    units: list[dict[str, Any]]  # [{name, group, block}] in depth order
    angles: dict[str, float]  # mean fine-tuned angle of the chosen full runs
    angle_seeds: int
    stability: dict[str, list[float]]  # group ("all" too) -> pairwise Spearman across seeds
    cheap: dict[str, Any]  # the cheap-angle comparison
    soups: list[dict[str, Any]]
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def row(self, label: str) -> StrategyRow | None:
        return next((r for r in self.rows if r.label == label), None)


def _order(label: str) -> tuple[int, str]:
    base = label.split(" ")[0]
    return (BASE_STRATEGIES.index(base) if base in BASE_STRATEGIES else len(BASE_STRATEGIES), label)


def strategy_rows(records: Sequence[Record], chosen: dict[str, float]) -> list[StrategyRow]:
    by_label: dict[str, list[Record]] = {}
    for r in main_records(records, chosen):
        by_label.setdefault(r.label, []).append(r)
    rows = []
    for label in sorted(by_label, key=_order):
        rs = by_label[label]
        shift_names = sorted(rs[0].shift_acc)
        shifts = {s: spread([r.shift_acc[s] for r in rs]) for s in shift_names}
        if shift_names:
            shifts["mean"] = spread([sum(r.shift_acc.values()) / len(shift_names) for r in rs])
        rows.append(
            StrategyRow(
                label=label,
                family=family(rs[0].spec.strategy),
                lr=rs[0].spec.lr,
                tuned_params=rs[0].tuned_params,
                tuned_fraction=float(rs[0].summary["strategy"]["tuned_fraction"]),
                test=spread([r.test for r in rs]),
                heldout=spread([r.heldout for r in rs]),
                shifts=shifts,
                seconds=spread([r.wall_seconds for r in rs if r.wall_seconds is not None]),
            )
        )
    return rows


def lr_grid(records: Sequence[Record]) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    for r in records:
        if r.spec.seed == 0 and r.spec.phase != "cheap":
            out.setdefault(r.label, {})[r.spec.lr] = r.heldout
    return {
        k: dict(sorted(v.items())) for k, v in sorted(out.items(), key=lambda kv: _order(kv[0]))
    }


def angle_stability(fulls: Sequence[Record], units: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Pairwise Spearman ρ of the per-unit angle rankings of full runs (different seeds)."""
    groups: dict[str, list[str]] = {"all": [u["name"] for u in units]}
    for u in units:
        groups.setdefault(u["group"], []).append(u["name"])
    vectors = [r.unit_angles for r in fulls]
    return {g: pairwise_spearman(vectors, names) for g, names in groups.items()}


def _groups(units: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for u in units:
        out.setdefault(u["group"], []).append(u["name"])
    return out


def _topk_agreement(
    a: dict[str, float], b: dict[str, float], groups: dict[str, list[str]], ks: Sequence[int]
) -> dict[str, float]:
    """Overlap of the units angle_topk would pick from ``a`` and from ``b``, per (order, k)."""
    out = {}
    for order in ("largest", "smallest"):
        for k in ks:
            picked_a = set().union(*(top_k(a, n, k, order == "largest") for n in groups.values()))
            picked_b = set().union(*(top_k(b, n, k, order == "largest") for n in groups.values()))
            out[f"{order} k={k}"] = overlap(picked_a, picked_b)
    return out


def cheap_angles(
    cheap: Sequence[Record],
    complete: Sequence[Record],
    units: list[dict[str, Any]],
    ks: Sequence[int],
) -> dict[str, Any]:
    """Short runs' angles against the complete runs' (same seed and learning rate), and the
    complete runs' own angles after the same number of epochs (their trajectory)."""
    groups = _groups(units)
    every = [u["name"] for u in units]
    full_by_seed = {r.spec.seed: r for r in complete}
    pairs = []
    for short in sorted(cheap, key=lambda r: r.spec.seed):
        full = full_by_seed.get(short.spec.seed)
        if full is None:
            continue
        row: dict[str, Any] = {
            "seed": short.spec.seed,
            "epochs": short.spec.epochs,
            "of_epochs": full.spec.epochs,
        }
        row["rho"] = {
            g: spearman_on(short.unit_angles, full.unit_angles, n)
            for g, n in {"all": every, **groups}.items()
        }
        row["topk"] = _topk_agreement(short.unit_angles, full.unit_angles, groups, ks)
        early = next(
            (t["units"] for t in full.trajectory if t.get("epoch") == short.spec.epochs), None
        )
        if early:
            row["trajectory_rho"] = {
                g: spearman_on(early, full.unit_angles, n)
                for g, n in {"all": every, **groups}.items()
            }
        row["short_angles"] = short.unit_angles
        row["full_angles"] = full.unit_angles
        row["short_seconds"] = short.wall_seconds
        row["full_seconds"] = full.wall_seconds
        pairs.append(row)
    return {"pairs": pairs}


def analyse_dataset(
    dataset: str, records: Sequence[Record], soups: list[dict[str, Any]], ks: Sequence[int]
) -> DatasetAnalysis:
    chosen = choose_lrs(records)
    rows = strategy_rows(records, chosen)
    front = pareto_front([(float(r.tuned_params), r.test.mean) for r in rows])
    fulls = [r for r in main_records(records, chosen) if r.label == FULL]
    units = unit_order(fulls)
    cheap = [r for r in records if r.spec.phase == "cheap"]
    out = DatasetAnalysis(
        dataset=dataset,
        rows=rows,
        lr_grid=lr_grid(records),
        pareto=[rows[i].label for i in front],
        units=units,
        angles=mean_angles(fulls),
        angle_seeds=len(fulls),
        stability=angle_stability(fulls, units),
        cheap=cheap_angles(cheap, fulls, units, ks),
        soups=soups,
    )
    out.verdicts = verdicts(out)
    return out


# --- claim by claim -------------------------------------------------------------------------


def _se(a: Spread, b: Spread) -> float:
    return math.sqrt(a.std**2 / max(a.n, 1) + b.std**2 / max(b.n, 1))


def compare(a: Spread, b: Spread) -> tuple[float, str]:
    """``a − b`` in accuracy points and "better" / "similar" / "worse" at Z standard errors
    (with a floor of half a point, as two or three seeds understate the spread)."""
    diff = a.mean - b.mean
    margin = max(Z * _se(a, b), 0.005)
    word = "better" if diff > margin else "worse" if diff < -margin else "similar"
    return diff * 100, word


def _best(rows: Sequence[StrategyRow]) -> StrategyRow | None:
    """The row with the best held-out accuracy (selection never looks at test)."""
    return max(rows, key=lambda r: r.heldout.mean) if rows else None


def claim1(a: DatasetAnalysis) -> dict[str, Any]:
    full = a.row(FULL)
    if full is None:
        return {"verdict": "inconclusive", "details": ["no full fine-tuning runs"]}
    comps = {}
    for label in (ATTN_ONLY, FFN_ONLY):
        row = a.row(label)
        if row is not None:
            diff, word = compare(row.test, full.test)
            comps[label] = {"diff": diff, "word": word, "params": row.tuned_params}
    manual = [r for r in a.rows if r.family == "manual"]
    spread_pts = (
        (max(r.test.mean for r in manual) - min(r.test.mean for r in manual)) * 100
        if manual
        else math.nan
    )
    beats = [r.label for r in manual if compare(r.test, full.test)[1] == "better"]
    matches = [r.label for r in manual if compare(r.test, full.test)[1] == "similar"]
    words = [c["word"] for c in comps.values()]
    if words and all(w == "better" for w in words):
        verdict = "supported"
    elif any(w in ("better", "similar") for w in words):
        verdict = "partly supported"
    else:
        verdict = "not supported"
    return {
        "verdict": verdict,
        "vs_full": comps,
        "manual_range_pts": spread_pts,
        "manual_better": beats,
        "manual_similar": matches,
        "full_params": full.tuned_params,
    }


def claim2(a: DatasetAnalysis) -> dict[str, Any]:
    topk = [r for r in a.rows if r.family == TOPK]
    manual = [r for r in a.rows if r.family == "manual"]
    full = a.row(FULL)
    if not topk or full is None:
        return {"verdict": "inconclusive", "orders": {}}
    orders: dict[str, dict[str, Any]] = {}
    for r in topk:
        k = r.label.split("k=")[1]
        orders.setdefault(k, {})[r.label.split(" ")[1]] = r
    order_cmp = {}
    for k, pair in orders.items():
        if "largest" in pair and "smallest" in pair:
            diff, word = compare(pair["smallest"].test, pair["largest"].test)
            order_cmp[k] = {"smallest_minus_largest": diff, "word": word}
    # Same tuned parameters: K = depth/2 per group against the two half-depth strategies.
    same_budget = {}
    for r in topk:
        for label in BLOCK_HALVES:
            m = a.row(label)
            if m is not None and m.tuned_params == r.tuned_params:
                same_budget.setdefault(r.label, {})[label] = compare(r.test, m.test)
    best_topk, best_manual = _best(topk), _best(manual)
    vs_full = compare(best_topk.test, full.test)
    vs_manual = compare(best_topk.test, best_manual.test) if best_manual else (math.nan, "")
    if vs_full[1] == "better" and vs_manual[1] != "worse":
        verdict = "supported"
    elif vs_full[1] != "worse" or any(
        w == "better" for v in same_budget.values() for _, w in v.values()
    ):
        verdict = "partly supported"
    else:
        verdict = "not supported"
    return {
        "verdict": verdict,
        "best_topk": best_topk.label,
        "best_manual": best_manual.label if best_manual else None,
        "vs_full": vs_full,
        "vs_best_manual": vs_manual,
        "orders": order_cmp,
        "same_budget": same_budget,
    }


def soup_rows(soups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per soup: best ingredient (by held-out) and mean ingredient against each soup method."""
    rows = []
    for s in soups:
        ind = s["individual"]
        best = max(ind, key=lambda i: i["heldout"])

        def shift_mean(d: dict[str, Any]) -> float:
            vals = list(d["shifts"].values())
            return sum(vals) / len(vals) if vals else math.nan

        row = {
            "name": s["name"],
            "n": len(ind),
            "tuned_params": s["tuned_params"],
            "best": {
                "test": best["test"],
                "shift": shift_mean(best),
                "heldout": best["heldout"],
                "run_id": best["run_id"],
            },
            "mean": {
                "test": sum(i["test"] for i in ind) / len(ind),
                "shift": sum(shift_mean(i) for i in ind) / len(ind),
                "heldout": sum(i["heldout"] for i in ind) / len(ind),
            },
            "greedy_size": len(s[GREEDY_SOUP]["selected"]),
        }
        for method in STUDY_SOUPS:
            if s.get(method):
                row[method] = {
                    "test": s[method]["test"],
                    "shift": shift_mean(s[method]),
                    "heldout": s[method]["heldout"],
                }
        rows.append(row)
    return rows


def claim3(a: DatasetAnalysis) -> dict[str, Any]:
    rows = soup_rows(a.soups)
    if not rows:
        return {"verdict": "inconclusive", "rows": []}
    wins_test, wins_shift, total = 0, 0, 0
    for row in rows:
        soup = max(
            (row[m] for m in STUDY_SOUPS if m in row),
            key=lambda v: v["heldout"],
        )  # the soup method chosen on held-out
        total += 1
        wins_test += soup["test"] > row["best"]["test"]
        wins_shift += soup["shift"] > row["best"]["shift"]
    partial = [r for r in rows if r["name"] != FULL]
    if wins_test == total and wins_shift == total:
        verdict = "supported"
    elif wins_test or wins_shift:
        verdict = "partly supported"
    else:
        verdict = "not supported"
    return {
        "verdict": verdict,
        "rows": rows,
        "wins_test": wins_test,
        "wins_shift": wins_shift,
        "soups": total,
        "partial_soups": [r["name"] for r in partial],
    }


def verdicts(a: DatasetAnalysis) -> dict[str, dict[str, Any]]:
    return {"claim1": claim1(a), "claim2": claim2(a), "claim3": claim3(a)}

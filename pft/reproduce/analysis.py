"""The study's analysis: pure functions from run records and soups to tables and verdicts.

Per dataset: a strategy table (mean ± spread over seeds at the held-out-chosen learning rate),
the learning-rate grid, the Pareto front of accuracy against tuned parameters, the stability of
the fine-tuned angle ranking across seeds, the cheap-angle agreement, and soups against their
ingredients, and which cheap selection criterion predicts the full-run angle ranking and
selects units best (`criteria_comparison`). `verdicts` turns these into claim-by-claim
statements (Ye et al. 2023).

Verdicts follow from paired comparisons over the reported seeds: the t-based 95% interval of
the mean difference, and one of four outcomes against an equivalence margin stated up front
(`pft.reproduce.stats.outcome`). A comparison supports a claim only when it is "better", or
"equivalent" with fewer tuned parameters. A study whose best strategy does not beat chance
(or whose backbone is random-init) draws no verdict.
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
    CHEAP_CRITERIA,
    FFN_ONLY,
    FULL,
    GREEDY_SOUP,
    REFERENCE_CRITERION,
    SELECTOR_ORDER,
    STUDY_SOUPS,
    TOPK,
    TRAINED_CRITERIA,
    UNIFORM_SOUP,
    family,
)
from pft.reproduce.results import (
    Record,
    angle_scores,
    at_edge,
    choose_lrs,
    is_selection,
    main_records,
    mean_angles,
    mean_scores,
    short_angle_scores,
    unit_order,
)
from pft.reproduce.stats import (
    BETTER,
    EQUIVALENT,
    WORSE,
    Interval,
    Spread,
    binomial_sd,
    mean_interval,
    noise_interval,
    outcome,
    overlap,
    paired_interval,
    pairwise_spearman,
    pareto_front,
    spearman_on,
    spread,
    top_k,
)

SUPPORTED, PARTLY, NOT_SUPPORTED = "supported", "partly supported", "not supported"
INCONCLUSIVE_VERDICT, NO_VERDICT = "inconclusive", "no verdict"
VERDICTS = (SUPPORTED, PARTLY, NOT_SUPPORTED, INCONCLUSIVE_VERDICT, NO_VERDICT)
METRICS = ("test", "shift")  # in distribution, and the mean over the shift sets


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
    by_seed: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> seed -> acc
    plateau: Spread = field(default_factory=lambda: spread([]))  # held-out gain, last epoch

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
    margin: float = 0.01  # equivalence margin (accuracy fraction)
    test_images: int | None = None  # test (and shift) set size: floors for the noise
    guard: dict[str, Any] = field(default_factory=dict)  # does the study beat chance?
    edges: dict[str, str] = field(default_factory=dict)  # label -> grid edge of its chosen lr
    criteria: dict[str, Any] = field(default_factory=dict)  # `criteria_comparison`

    def row(self, label: str) -> StrategyRow | None:
        return next((r for r in self.rows if r.label == label), None)


def _order(label: str) -> tuple[int, str]:
    base = label.split(" ")[0]
    return (BASE_STRATEGIES.index(base) if base in BASE_STRATEGIES else len(BASE_STRATEGIES), label)


def strategy_rows(records: Sequence[Record], chosen: dict[str, float]) -> list[StrategyRow]:
    return label_rows(main_records(records, chosen))


def label_rows(records: Sequence[Record]) -> list[StrategyRow]:
    """One row per label of ``records`` (its seeds' runs, all at one learning rate)."""
    by_label: dict[str, list[Record]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    rows = []
    for label in sorted(by_label, key=_order):
        rs = sorted(by_label[label], key=lambda r: r.spec.seed)
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
                by_seed={
                    "test": {r.spec.seed: r.test for r in rs},
                    "heldout": {r.spec.seed: r.heldout for r in rs},
                    "shift": {
                        r.spec.seed: sum(r.shift_acc.values()) / len(r.shift_acc)
                        for r in rs
                        if r.shift_acc
                    },
                },
                plateau=spread([g for g in map(last_gain, rs) if g is not None]),
            )
        )
    return rows


def last_gain(r: Record) -> float | None:
    """Held-out accuracy gained in a run's last epoch (small: the budget reached a plateau)."""
    hist = [e["heldout_acc"] for e in r.summary.get("epochs", []) if "heldout_acc" in e]
    return hist[-1] - hist[-2] if len(hist) >= 2 else None


def lr_grid(records: Sequence[Record]) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    for r in records:
        if is_selection(r):
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


def criteria_comparison(
    records: Sequence[Record],
    fulls: Sequence[Record],
    rows: Sequence[StrategyRow],
    scores: dict[str, dict[int, dict[str, Any]]],
    units: list[dict[str, Any]],
    ks: Sequence[int],
    *,
    k: int,
    fapft: str,
    margin: float,
    sd_floor: float = 0.0,
) -> dict[str, Any]:
    """Each cheap criterion against the full-run angles, and as the selector.

    ``scores``: criterion -> seed -> scores of the gradient criteria (``short_angle`` comes
    from the cheap runs in ``records``). Agreement (`pft.criteria.compare`): Spearman ρ of
    each seed's scores with the same seed's complete full run, a t interval over the seeds;
    top-K overlap, at every K, of the selector's scores (the seeds' mean) with the reference
    angles (the mean of the full runs, FAPFT's). Selection: the ``criterion_topk`` runs at
    ``k`` against ``fapft`` (``angle_topk`` at the same K and order) and full fine-tuning,
    paired over the seeds (`compare`: test and held-out accuracy)."""
    from pft.criteria.compare import compare as compare_criteria

    if not units or not fulls:
        return {}
    full_by_seed = {r.spec.seed: r for r in fulls}
    # Only the reported seeds' rankings (a folder may keep those of a larger earlier study).
    per_seed = {
        c: {s: v for s, v in by.items() if s in full_by_seed}
        for c, by in scores.items()
        if c in CHEAP_CRITERIA
    }
    for r in records:
        if r.spec.phase == "cheap" and r.spec.seed in full_by_seed:
            per_seed.setdefault(TRAINED_CRITERIA[0], {})[r.spec.seed] = short_angle_scores(r)
    reference = angle_scores(mean_angles(fulls), units)
    crit_rows = {
        r.label.split(" ")[1]: r
        for r in label_rows([r for r in records if r.spec.phase == "criteria"])
    }
    by_row = {r.label: r for r in rows}
    fapft_row, full_row = by_row.get(fapft), by_row.get(FULL)
    out_rows = []
    selectors: dict[str, dict[str, Any]] = {REFERENCE_CRITERION: reference}
    for c in CHEAP_CRITERIA:
        seeds = per_seed.get(c, {})
        if not seeds:
            continue
        rhos = []
        for seed, sc in sorted(seeds.items()):
            full = full_by_seed.get(seed)
            if full is None:
                continue
            pair = compare_criteria(
                {REFERENCE_CRITERION: angle_scores(full.unit_angles, units), c: sc},
                k,
                SELECTOR_ORDER,
            )["pairs"][0]
            if pair["spearman"] is not None:
                rhos.append(pair["spearman"])
        mean = mean_scores(seeds)
        selector = angle_scores(mean, units, spread([s["seconds"] for s in seeds.values()]).mean)
        selectors[c] = selector
        overlaps = {
            kk: compare_criteria({REFERENCE_CRITERION: reference, c: selector}, kk, SELECTOR_ORDER)[
                "pairs"
            ][0]["topk_overlap"]
            for kk in ks
        }
        row = crit_rows.get(c)
        entry: dict[str, Any] = {
            "criterion": c,
            "cost": spread([s["seconds"] for s in seeds.values()]),
            "rho": mean_interval(rhos),
            "overlap": overlaps,
            "row": row,
        }
        if row is not None:
            for m in ("heldout", "test"):  # seeds that tie: under one image apart, not zero
                entry[m] = mean_interval(list(row.by_seed[m].values()), sd_floor=sd_floor)
            for name, other in (("vs_fapft", fapft_row), ("vs_full", full_row)):
                if other is not None:
                    entry[name] = {
                        m: compare(row, other, margin, m, sd_floor) for m in ("test", "heldout")
                    }
        out_rows.append(entry)
    matrix = compare_criteria(selectors, k, SELECTOR_ORDER)
    names = list(selectors)
    rho = [[1.0 if a == b else math.nan for b in names] for a in names]
    for p in matrix["pairs"]:
        i, j = names.index(p["a"]), names.index(p["b"])
        v = math.nan if p["spearman"] is None else p["spearman"]
        rho[i][j] = rho[j][i] = v
    ref_cost = spread([float(r.summary.get("train_seconds", 0.0)) for r in fulls])
    return {
        "k": k,
        "order": SELECTOR_ORDER,
        "ks": list(ks),
        "fapft": fapft,
        "rows": out_rows,
        "fapft_row": fapft_row,
        "full_row": full_row,
        "reference_cost": ref_cost,
        "reference_seeds": len(fulls),
        "matrix": {"names": names, "rho": rho},
        "margin": margin,
    }


def analyse_dataset(
    dataset: str,
    records: Sequence[Record],
    soups: list[dict[str, Any]],
    ks: Sequence[int],
    *,
    margin: float = 0.01,
    chance_margin: float = 0.05,
    random_init: bool = False,
    test_images: int | None = None,
    criteria: dict[str, dict[int, dict[str, Any]]] | None = None,
    selector: tuple[int, str] | None = None,
) -> DatasetAnalysis:
    """Everything the report shows for one dataset. ``criteria``: the gradient criteria's
    scores per seed (`results.load_criteria`); ``selector``: the criteria phase's K and the
    FAPFT label it is compared with (`plan.selector_k`, `plan.fapft_label`)."""
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
        margin=margin,
        test_images=test_images,
        edges=at_edge(records),
    )
    classes = next(
        (int(r.summary["num_classes"]) for r in records if "num_classes" in r.summary), 0
    )
    out.guard = chance_guard(rows, classes, chance_margin, random_init, _floor(out))
    out.verdicts = verdicts(out)
    if selector is not None:
        out.criteria = criteria_comparison(
            records,
            fulls,
            rows,
            criteria or {},
            units,
            ks,
            k=selector[0],
            fapft=selector[1],
            margin=margin,
            sd_floor=_floor(out),
        )
    return out


# --- claim by claim -------------------------------------------------------------------------


def _floor(a: Any) -> float:
    """The floor of a seed-to-seed standard deviation: one test image (0 when unknown)."""
    n = getattr(a, "test_images", None)
    return 1 / n if n else 0.0


def chance_guard(
    rows: Sequence[StrategyRow],
    classes: int,
    chance_margin: float,
    random_init: bool = False,
    sd_floor: float = 0.0,
) -> dict[str, Any]:
    """Whether the study beats chance: the 95% interval of the test accuracy of the strategy
    with the best held-out accuracy must clear 1 / classes by ``chance_margin``. A random-init
    backbone draws no verdict either (the claims are about fine-tuning a pre-trained model)."""
    chance = 1 / classes if classes else math.nan
    best = _best(rows)
    iv = (
        mean_interval(list(best.by_seed["test"].values()), sd_floor=sd_floor)
        if best
        else (mean_interval([]))
    )
    beats = bool(best) and not math.isnan(chance) and iv.lo > chance + chance_margin
    reasons = []
    if random_init:
        reasons.append("the backbone is a random-init model, not a pre-trained one")
    if not beats:
        reasons.append(
            "the best strategy's 95% interval of test accuracy"
            + (f" ({_pct_iv(iv)})" if best else "")
            + f" does not clear chance ({100 * chance:.1f}%) by {100 * chance_margin:.0f} points"
        )
    return {
        "ok": not reasons,
        "reasons": reasons,
        "chance": chance,
        "classes": classes,
        "chance_margin": chance_margin,
        "best": best.label if best else None,
        "interval": iv,
        "random_init": random_init,
    }


def _pct_iv(iv: Interval) -> str:
    if math.isinf(iv.half_width):
        return f"{100 * iv.mean:.1f}%, one seed"
    return f"{100 * iv.mean:.1f}% [{100 * iv.lo:.1f}, {100 * iv.hi:.1f}]"


def supports(result: str, fewer: bool) -> bool:
    """A comparison supports a claim only when it is better, or equivalent with fewer tuned
    parameters."""
    return result == BETTER or (result == EQUIVALENT and fewer)


def against(result: str, fewer: bool) -> bool:
    """A comparison that counts against a claim: worse, or equivalent without saving any
    tuned parameters."""
    return result == WORSE or (result == EQUIVALENT and not fewer)


def _comparison(
    a: str, b: str, metric: str, iv: Interval, margin: float, params_a: int, params_b: int
) -> dict[str, Any]:
    result = outcome(iv, margin)
    fewer = params_a < params_b
    return {
        "a": a,
        "b": b,
        "metric": metric,
        "diff": iv,
        "margin": margin,
        "outcome": result,
        "params_a": params_a,
        "params_b": params_b,
        "fewer": fewer,
        "supports": supports(result, fewer),
        "against": against(result, fewer),
    }


def compare(
    a: StrategyRow, b: StrategyRow, margin: float, metric: str = "test", sd_floor: float = 0.0
) -> dict[str, Any]:
    """``a − b`` paired over the seeds both ran: the mean difference, its t-based 95% interval
    (the standard deviation of the differences at least ``sd_floor``) and the outcome against
    ``margin``."""
    iv = paired_interval(a.by_seed.get(metric, {}), b.by_seed.get(metric, {}), sd_floor=sd_floor)
    return _comparison(a.label, b.label, metric, iv, margin, a.tuned_params, b.tuned_params)


def combine(comps: Sequence[dict[str, Any]]) -> str:
    """A claim's verdict from the comparisons that decide it: supported when all support it,
    partly when some do, not supported when every one counts against it, else inconclusive."""
    if not comps:
        return INCONCLUSIVE_VERDICT
    if all(c["supports"] for c in comps):
        return SUPPORTED
    if any(c["supports"] for c in comps):
        return PARTLY
    if all(c["against"] for c in comps):
        return NOT_SUPPORTED
    return INCONCLUSIVE_VERDICT


def _guarded(a: DatasetAnalysis, verdict: str) -> str:
    guard = getattr(a, "guard", None) or {"ok": True}
    return verdict if guard["ok"] else NO_VERDICT


def _margin(a: DatasetAnalysis) -> float:
    return getattr(a, "margin", 0.01)


def _best(rows: Sequence[StrategyRow]) -> StrategyRow | None:
    """The row with the best held-out accuracy (selection never looks at test)."""
    return max(rows, key=lambda r: r.heldout.mean) if rows else None


def claim1(a: DatasetAnalysis) -> dict[str, Any]:
    """ATTN-only and FFN-only against full fine-tuning (the paper's examples) decide; every
    manual strategy against full, and the best against the worst manual strategy (by
    held-out), show whether which layers are tuned matters."""
    full, m, f = a.row(FULL), _margin(a), _floor(a)
    if full is None:
        return {"verdict": _guarded(a, INCONCLUSIVE_VERDICT), "details": ["no full runs"]}
    deciding = [
        compare(row, full, m, sd_floor=f)
        for row in (a.row(ATTN_ONLY), a.row(FFN_ONLY))
        if row is not None
    ]
    manual = [r for r in a.rows if r.family == "manual"]
    every = [compare(r, full, m, metric, f) for r in manual for metric in METRICS]
    spread_pts = (
        (max(r.test.mean for r in manual) - min(r.test.mean for r in manual)) * 100
        if manual
        else math.nan
    )
    layers = None
    if len(manual) > 1:
        ranked = sorted(manual, key=lambda r: r.heldout.mean)
        layers = compare(ranked[-1], ranked[0], m, sd_floor=f)
    return {
        "verdict": _guarded(a, combine(deciding)),
        "computed": combine(deciding),
        "deciding": deciding,
        "manual_vs_full": every,
        "layers_matter": layers,
        "manual_range_pts": spread_pts,
        "full_params": full.tuned_params,
    }


def claim2(a: DatasetAnalysis) -> dict[str, Any]:
    """The best ``angle_topk`` setting (by held-out) against full fine-tuning and against the
    best manual strategy (by held-out) decide; orders and same-budget comparisons inform."""
    topk = [r for r in a.rows if r.family == TOPK]
    manual = [r for r in a.rows if r.family == "manual"]
    full, m, f = a.row(FULL), _margin(a), _floor(a)
    if not topk or full is None:
        return {"verdict": _guarded(a, INCONCLUSIVE_VERDICT), "orders": [], "deciding": []}
    best_topk, best_manual = _best(topk), _best(manual)
    deciding = [compare(best_topk, full, m, sd_floor=f)]
    if best_manual is not None:
        deciding.append(compare(best_topk, best_manual, m, sd_floor=f))
    by_k: dict[str, dict[str, StrategyRow]] = {}
    for r in topk:
        by_k.setdefault(r.label.split("k=")[1], {})[r.label.split(" ")[1]] = r
    orders = [
        compare(pair["smallest"], pair["largest"], m, sd_floor=f)
        for _, pair in sorted(by_k.items(), key=lambda kv: int(kv[0]))
        if "largest" in pair and "smallest" in pair
    ]
    same_budget = [
        compare(r, row, m, sd_floor=f)
        for r in topk
        for row in filter(None, map(a.row, BLOCK_HALVES))
        if row.tuned_params == r.tuned_params
    ]
    return {
        "verdict": _guarded(a, combine(deciding)),
        "computed": combine(deciding),
        "best_topk": best_topk.label,
        "best_manual": best_manual.label if best_manual else None,
        "deciding": deciding,
        "orders": orders,
        "same_budget": same_budget,
    }


def _shift_mean(d: dict[str, Any]) -> float:
    vals = list(d.get("shifts", {}).values())
    return sum(vals) / len(vals) if vals else math.nan


def soup_rows(soups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per soup: best ingredient (by held-out), mean ingredient, the ingredients' seed-to-seed
    standard deviation, and every merge method's scores (``None``: equal to the uniform soup)."""
    rows = []
    for s in soups:
        ind = s["individual"]
        best = max(ind, key=lambda i: i["heldout"])
        row = {
            "name": s["name"],
            "n": len(ind),
            "tuned_params": s["tuned_params"],
            "best": {
                "test": best["test"],
                "shift": _shift_mean(best),
                "heldout": best["heldout"],
                "run_id": best["run_id"],
            },
            "mean": {
                "test": sum(i["test"] for i in ind) / len(ind),
                "shift": sum(_shift_mean(i) for i in ind) / len(ind),
                "heldout": sum(i["heldout"] for i in ind) / len(ind),
            },
            "sd": {
                "test": spread([i["test"] for i in ind]).std,
                "shift": spread([_shift_mean(i) for i in ind]).std,
            },
            "greedy_size": len((s.get(GREEDY_SOUP) or {}).get("selected", [])),
        }
        for method in STUDY_SOUPS:
            if s.get(method):
                row[method] = {
                    "test": s[method]["test"],
                    "shift": _shift_mean(s[method]),
                    "heldout": s[method]["heldout"],
                }
        rows.append(row)
    return rows


def _scores(row: dict[str, Any], method: str) -> dict[str, Any] | None:
    """A soup's scores under ``method``; a skipped method equals the uniform soup."""
    return row.get(method) or (row.get(UNIFORM_SOUP) if method != UNIFORM_SOUP else None)


def claim3(a: DatasetAnalysis) -> dict[str, Any]:
    """Claim 3 as the paper states it: at matched ingredient counts, soups of partially
    fine-tuned ingredients against the soup of fully fine-tuned ones, in and out of
    distribution, under every merge method (deciding: a pair supports the claim when both
    accuracies do, with fewer tuned parameters); and every soup against its best ingredient.

    A soup is one model, so its difference gets a noise interval from the seed-to-seed
    standard deviation of single runs (`stats.noise_interval`), not a paired one."""
    rows, m, n_test = soup_rows(a.soups), _margin(a), getattr(a, "test_images", None)
    if not rows:
        return {"verdict": _guarded(a, INCONCLUSIVE_VERDICT), "rows": [], "pairs": []}
    full = next((r for r in rows if r["name"] == FULL), None)
    pairs, unmatched = [], []
    for row in rows:
        if full is None or row is full:
            continue
        if row["n"] != full["n"]:
            unmatched.append(row["name"])
            continue
        for method in STUDY_SOUPS:
            mine, theirs = _scores(row, method), _scores(full, method)
            if mine is None or theirs is None or not (row.get(method) or full.get(method)):
                continue  # both equal their uniform soup: compared there
            comps = {}
            for metric in METRICS:
                iv = noise_interval(
                    mine[metric] - theirs[metric],
                    [
                        max(row["sd"][metric], binomial_sd(mine[metric], n_test)),
                        max(full["sd"][metric], binomial_sd(theirs[metric], n_test)),
                    ],
                    df=row["n"] + full["n"] - 2,
                )
                comps[metric] = _comparison(
                    f"{row['name']} soup",
                    f"{FULL} soup",
                    metric,
                    iv,
                    m,
                    row["tuned_params"],
                    full["tuned_params"],
                )
                comps[metric]["method"] = method
            pairs.append(
                {
                    "soup": row["name"],
                    "method": method,
                    "comps": comps,
                    "supports": all(c["supports"] for c in comps.values()),
                    "against": any(c["against"] for c in comps.values()),
                }
            )
    vs_best = []
    for row in rows:
        for method in STUDY_SOUPS:
            mine = row.get(method)
            if mine is None:
                continue  # equal to the uniform soup
            for metric in METRICS:
                iv = noise_interval(
                    mine[metric] - row["best"][metric],
                    [
                        max(row["sd"][metric], binomial_sd(mine[metric], n_test)),
                        max(row["sd"][metric], binomial_sd(row["best"][metric], n_test)),
                    ],
                    df=row["n"] - 1,
                )
                c = _comparison(f"{row['name']} soup", "its best ingredient", metric, iv, m, 0, 0)
                c["method"] = method
                vs_best.append(c)
    verdict = combine(pairs) if pairs else INCONCLUSIVE_VERDICT
    return {
        "verdict": _guarded(a, verdict),
        "computed": verdict,
        "rows": rows,
        "pairs": pairs,
        "vs_best": vs_best,
        "unmatched": unmatched,
        "methods": list(STUDY_SOUPS),
    }


def verdicts(a: DatasetAnalysis) -> dict[str, dict[str, Any]]:
    return {"claim1": claim1(a), "claim2": claim2(a), "claim3": claim3(a)}

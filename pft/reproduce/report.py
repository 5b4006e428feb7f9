"""Writes the study's Markdown report: setup, claim-by-claim verdicts with the paper's numbers
beside ours, tables of mean ± spread, and the figures (`pft.reproduce.figures`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pft.reproduce.analysis import NO_VERDICT, DatasetAnalysis, soup_rows
from pft.reproduce.plan import (
    ATTN_ONLY,
    CHEAP_CRITERIA,
    FFN_ONLY,
    FULL,
    GRADIENT_CRITERIA,
    GREEDY_SOUP,
    REFERENCE_CRITERION,
    SELECTION_SEED,
    STUDY_SOUPS,
    TRAINED_CRITERIA,
    Preset,
    cheap_epochs,
    selector_k,
)
from pft.reproduce.stats import BETTER, EQUIVALENT, LEVEL, spread

# Ye et al. 2023, ViT-B/16 (ImageNet-21K) on CIFAR-100, as summarised in PAPER.md.
PAPER_CIFAR100 = [
    ("full fine-tuning", 93.51, "85.88M"),
    ("linear probing", 88.70, "0.08M"),
    ("ATTN-only", 93.84, "28.44M"),
    ("FFN-only", 93.98, "56.76M"),
    ("FAPFT (angle top-K, K=7 per group)", 94.30, "49.69M"),
]
PAPER_FGVC_MEAN = {FULL: 88.54, ATTN_ONLY: 89.48, FFN_ONLY: 88.43}
PAPER_SOUPS = "CLIP ViT-B/32 on ImageNet (Wortsman et al. 2022): uniform 79.97, greedy 81.03"


RUNNING = """
## Running the study

```bash
pft reproduce --quick                      # CI smoke test on the random-init test model (~1 min)
pft reproduce --preset reduced --threads 1 --report docs/REPRODUCTION.md   # ~45 min, digits
pft reproduce --preset full --workers 2 --threads 1 --report docs/REPRODUCTION.md  # both targets
pft reproduce --preset full --report-only --report docs/REPRODUCTION.md    # report only
```

Each run has its own folder under `--out` (default `$PFT_DATA_DIR/reproduce/PRESET`); running
the command again skips finished runs and resumes an interrupted one from its last epoch.
`--seeds`, `--epochs` and `--dataset` override the preset (the report names the overrides).
The `angle_topk` runs use the mean angles of every seed's full run, so adding seeds re-runs them
(their configuration changed); other finished runs are kept.
`python benchmarks/reproduce.py` takes the same options. `--threads 1` is fastest on a CPU that
other work shares; `--workers N` trains N runs at once, each in a process of its own (one per
CPU core). The built-in backbone ships with the package (`pft pretrain` remakes it).
"""


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _params(n: int) -> str:
    return f"{n / 1e6:.3f}M" if n >= 1e5 else f"{n:,}"


def _rho(values: Sequence[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    s = spread(vals)
    return f"{s.mean:.2f} (min {s.lo:.2f}, {s.n} pairs)" if s.n > 1 else f"{s.mean:.2f}"


VERDICT_HEADER = [
    "comparison",
    "metric",
    "difference (points)",
    f"{LEVEL:.0%} interval",
    "margin",
    "outcome",
    "tuned params",
    "supports the claim",
]


def _verdict_rows(comps: Sequence[dict[str, Any]], note: str = "") -> list[list[Any]]:
    rows = []
    for c in comps:
        iv = c["diff"]
        interval = (
            "one value: none"
            if iv.n <= 1 and math.isinf(iv.half_width)
            else f"[{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]"
        )
        method = f" ({c['method']})" if c.get("method") else ""
        params = (
            f"{_params(c['params_a'])} vs {_params(c['params_b'])}"
            if c["params_a"] or c["params_b"]
            else "–"
        )
        rows.append(
            [
                f"`{c['a']}` − `{c['b']}`{method}",
                "test" if c["metric"] == "test" else "shift mean",
                "–" if math.isnan(iv.mean) else f"{100 * iv.mean:+.1f}",
                interval,
                f"±{100 * c['margin']:.1f}",
                f"**{c['outcome']}**",
                params,
                ("yes" if c["supports"] else "no") + note,
            ]
        )
    return rows


def _verdict_table(comps: Sequence[dict[str, Any]], note: str = "") -> str:
    if not comps:
        return "No comparison could be made.\n"
    return _table(VERDICT_HEADER, _verdict_rows(comps, note))


def _verdict_line(a: DatasetAnalysis, c: dict[str, Any]) -> str:
    if c["verdict"] == NO_VERDICT:
        return (
            f"**Verdict on `{a.dataset}`: no verdict** ({'; '.join(a.guard['reasons'])}; the "
            f'comparisons alone would say "{c.get("computed", "?")}").\n'
        )
    return f"**Verdict on `{a.dataset}`: {c['verdict']}.**\n"


OUTCOMES_TEXT = (
    "Every comparison is paired over the reported seeds (the same seeds on both sides): the "
    "mean difference in accuracy points, its t-based {level} interval, and one of four "
    "outcomes against the equivalence margin of ±{margin} points stated before the runs: "
    "**equivalent** when the whole interval lies inside the margin, else **better** when it "
    "lies above zero, **worse** when below, **inconclusive** when it straddles zero. A "
    'difference that is merely not significant is inconclusive, never "on par". A claim is '
    'supported only by "better" or by "equivalent" with fewer tuned parameters; '
    '"supported" needs every deciding comparison, "partly supported" some, "not '
    'supported" means every one was worse or saved no parameters.\n'
)


def _guard_text(a: DatasetAnalysis) -> str:
    g = a.guard
    if not g:
        return ""
    if g["ok"]:
        return (
            f"The study beats chance on `{a.dataset}`: `{g['best']}` (best held-out accuracy) "
            f"reaches {_iv_pct(g['interval'])} test accuracy against chance "
            f"{100 * g['chance']:.1f}% ({g['classes']} classes).\n"
        )
    return (
        f"**No verdict on `{a.dataset}`:** {'; '.join(g['reasons'])}. The runs do not show "
        "fine-tuning that works, so none of the comparisons below can support or refute the "
        "paper; they are shown for completeness only.\n"
    )


def _iv_pct(iv: Any) -> str:
    if math.isinf(iv.half_width) or math.isnan(iv.half_width):
        return f"{100 * iv.mean:.1f}% (one seed: no interval)"
    lo, hi = max(iv.lo, 0.0), min(iv.hi, 1.0)  # an accuracy's range
    return f"{100 * iv.mean:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _link(fig: Path | None, report: Path, alt: str) -> str:
    if fig is None:
        return ""
    rel = os.path.relpath(fig, report.parent)
    return f"![{alt}]({rel})\n"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _setup(preset: Preset, meta: dict[str, Any]) -> str:
    targets = ", ".join(
        f"`{t.dataset}` ({t.epochs} epochs"
        + (f", first {t.train_limit} images of each split" if t.train_limit else "")
        + ")"
        for t in preset.targets
    )
    grids = "; ".join(
        f"{fam}: {', '.join(f'{lr:g}' for lr in lrs)}" for fam, lrs in preset.lr_grid.items()
    )
    cheap = ", ".join(f"{cheap_epochs(preset, t)} of {t.epochs} epochs" for t in preset.targets)
    return "\n".join(
        [
            "## Setup\n",
            f"- **Preset `{preset.name}`**: {preset.description}. Command: `{meta['command']}`.",
            f"- Backbone: `{preset.model}`; targets: {targets}; batch {preset.batch_size}; "
            "AdamW with warm-up and cosine decay, label smoothing 0.1 (the engine's defaults).",
            f"- Backbone provenance: {meta.get('backbone', '?')}",
            f"- Seeds: {preset.seeds} per strategy (data order and augmentation); every run shares "
            "the head initialisation (`head_seed` 0) so that runs can be souped.",
            f"- Learning-rate grid per family ({grids}): every rate is tried with the selection "
            f"seed {SELECTION_SEED}, which is never reported, and the one with the best "
            "**held-out** accuracy (a split of the training images, never trained on) is used "
            f"for the reported seeds 0–{preset.seeds - 1}. While the chosen rate is the "
            f"largest or smallest tried, the grid widens one step (1-3-10 ladder) past that "
            f"edge, {preset.widen} step(s) at most. Test accuracy plays no part in any choice.",
            f"- Verdicts: paired {LEVEL:.0%} t intervals over the reported seeds, equivalence "
            f"margin ±{100 * preset.margin:.1f} points, no verdict unless the best strategy's "
            f"interval clears chance by {100 * preset.chance_margin:.0f} points.",
            "- Epoch budgets: "
            + "; ".join(
                f"`{t.dataset}` {t.epochs} ({t.budget or 'not justified'})" for t in preset.targets
            )
            + ". The strategy table shows the held-out gain of the last epoch (plateau check).",
            f"- `angle_topk`: K in {', '.join(map(str, preset.ks))} per group, orders "
            f"{' and '.join(preset.orders)}, reference angles = mean over seeds of the chosen full "
            "fine-tuning runs.",
            f"- Shift sets (test images corrupted at severity 3): {', '.join(preset.shifts)}.",
            f"- Cheap angles: short full fine-tuning runs of {cheap} at the full runs' "
            "learning rate.",
            f"- Selection criteria (registry `pft.criteria`): {', '.join(GRADIENT_CRITERIA)} "
            f"on {preset.criteria_batches} batches of {preset.batch_size} training images per "
            "reported seed (no weight update, at the runs' shared starting point); "
            f"{', '.join(TRAINED_CRITERIA)} = the cheap-angle runs above. Each criterion's "
            f"scores, averaged over the seeds, select `criterion_topk` at K={selector_k(preset)} "
            "per group (largest scores), fine-tuned at FAPFT's learning rate.",
            "- Augmentation: "
            + (
                "on (random translation, and flips where the dataset allows them)."
                if preset.augment
                else "**off**, a recipe change from the engine's default (random translation "
                "and flips): with augmentation off, every run whose tuned tensors lie at or "
                "above a block > 0 (the last-half strategies, `linear_probe`, top-K selections "
                "that skip the first blocks) trains on cached frozen-prefix tokens, computed "
                "once per image (`pft.prefix_cache`; exact on CPU)."
            )
            + f" {meta.get('cache', '')}",
            f"- Machine: {meta.get('machine', '?')}.",
            f"- Wall time: {meta.get('wall_minutes', math.nan):.1f} minutes is the **sum of the "
            "runs' own seconds** (training and evaluation of each run; soups and criterion "
            "scoring excluded); the **real elapsed time** of the `pft reproduce` "
            f"session(s) that ran the study was {meta.get('elapsed_minutes', math.nan):.1f} "
            f"minutes ({meta.get('sessions', 0)} session(s), everything included).",
            "",
        ]
    )


def _strategy_table(a: DatasetAnalysis) -> str:
    rows = []
    for r in a.rows:
        mark = " ★" if r.label in a.pareto else ""
        rows.append(
            [
                f"`{r.label}`{mark}",
                _params(r.tuned_params),
                f"{100 * r.tuned_fraction:.1f}%",
                f"{r.lr:g}",
                r.test.n,
                r.test.fmt(),
                r.heldout.fmt(),
                r.shift_mean.fmt(),
                "–" if r.plateau.n == 0 else f"{100 * r.plateau.mean:+.1f}",
                f"{r.seconds.mean:.0f}",
            ]
        )
    return _table(
        [
            "strategy",
            "tuned params",
            "of total",
            "lr",
            "seeds",
            "test acc %",
            "held-out acc %",
            "shift acc %",
            "last-epoch held-out gain",
            "s / run",
        ],
        rows,
    )


def _plateau_text(a: DatasetAnalysis) -> str:
    """Which strategies still gained more than the margin in their last epoch."""
    rising = [r.label for r in a.rows if r.plateau.n and r.plateau.mean > a.margin]
    if not rising:
        return (
            f"\nEvery strategy gained at most {100 * a.margin:.1f} points of held-out accuracy "
            "in its last epoch: the budget reached a plateau.\n"
        )
    return (
        f"\nStill rising in the last epoch (more than {100 * a.margin:.1f} points of held-out "
        "accuracy; the budget did not reach a plateau for them): "
        + ", ".join(f"`{x}`" for x in rising)
        + ".\n"
    )


def _lr_table(a: Any) -> str:
    lrs = sorted({lr for g in a.lr_grid.values() for lr in g})
    rows = [
        [f"`{label}`"] + [_pct(g[lr]) if lr in g else "" for lr in lrs]
        for label, g in a.lr_grid.items()
    ]
    text = _table(["strategy"] + [f"lr {lr:g}" for lr in lrs], rows)
    grids = {label: g for label, g in a.lr_grid.items() if len(g) > 1}
    edge = [label for label, g in grids.items() if max(g, key=g.get) == max(g)]
    if grids and len(edge) > len(grids) / 2:
        text += (
            f"\n{len(edge)} of {len(grids)} strategies chose the largest rate of their "
            "grid, so a larger rate might do better still: the grid is too narrow at its "
            "upper edge for this budget, and the accuracies in the table above may "
            "understate what each strategy can reach.\n"
        )
    edges = getattr(a, "edges", {})
    if edges:
        text += (
            "\nChosen rate still at an edge of the rates tried (the preset's widening steps "
            "were spent or disabled; top, bottom, or both for a single rate): "
            + ", ".join(f"`{k}` ({v})" for k, v in edges.items())
            + ".\n"
        )
    elif grids:
        text += "\nEvery chosen rate lies inside its grid.\n"
    return text


def _claim1_text(a: DatasetAnalysis) -> str:
    c = a.verdicts["claim1"]
    if "deciding" not in c:
        return "No full fine-tuning runs: nothing to compare.\n"
    text = "Deciding comparisons (the paper's examples against full fine-tuning):\n\n"
    text += _verdict_table(c["deciding"])
    text += (
        f"\nAcross the eight manual strategies, mean test accuracy spans "
        f"{c['manual_range_pts']:.1f} points. "
    )
    if c["layers_matter"]:
        lm = c["layers_matter"]
        text += (
            f"The best manual strategy by held-out accuracy minus the worst: "
            f"{lm['diff'].fmt()} points, **{lm['outcome']}** (which units are tuned "
            + ("matters" if lm["outcome"] == "better" else "is not shown to matter")
            + ").\n"
        )
    text += "\nEvery manual strategy against full fine-tuning (informative):\n\n"
    text += _verdict_table(c["manual_vs_full"])
    return text + "\n" + _verdict_line(a, c)


def _claim2_text(a: DatasetAnalysis) -> str:
    c = a.verdicts["claim2"]
    if "best_topk" not in c:
        return "No `angle_topk` runs.\n"
    text = (
        f"Deciding comparisons: the best `angle_topk` setting by held-out accuracy, "
        f"`{c['best_topk']}`, against full fine-tuning and against the best manual strategy "
        f"by held-out accuracy, `{c['best_manual']}`:\n\n"
    )
    text += _verdict_table(c["deciding"])
    if c["orders"]:
        text += "\nSmallest-angle units against largest-angle units, per K (informative):\n\n"
        text += _verdict_table(c["orders"])
    if c["same_budget"]:
        text += "\nThe same tuned parameters as a half-depth strategy (informative):\n\n"
        text += _verdict_table(c["same_budget"])
    return text + "\n" + _verdict_line(a, c)


def _stability(a: DatasetAnalysis) -> str:
    rows = [[g, _rho(v)] for g, v in a.stability.items()]
    return _table(["units ranked", "Spearman ρ between seeds"], rows)


def _cheap(a: DatasetAnalysis, preset: Preset) -> str:
    pairs = a.cheap["pairs"]
    if not pairs:
        return "No cheap-angle runs.\n"
    groups = [g for g in pairs[0]["rho"] if g != "all"]
    keys = list(pairs[0]["topk"])
    rows = []
    for p in pairs:
        traj = p.get("trajectory_rho", {}).get("all", math.nan)
        saved = (
            (1 - p["short_seconds"] / p["full_seconds"])
            if p["short_seconds"] and p["full_seconds"]
            else math.nan
        )
        rows.append(
            [p["seed"], f"{p['epochs']}/{p['of_epochs']}", f"{p['rho']['all']:.2f}"]
            + [f"{p['rho'][g]:.2f}" for g in groups]
            + [f"{traj:.2f}"]
            + [f"{p['topk'][k]:.2f}" for k in keys]
            + [_pct(saved)]
        )
    header = (
        ["seed", "epochs (short/complete)", "ρ all"]
        + [f"ρ {g}" for g in groups]
        + ["ρ trajectory"]
        + [f"top-K overlap {k}" for k in keys]
        + ["time saved %"]
    )
    mean_overlap = spread([p["topk"][k] for p in pairs for k in keys]).mean
    text = _table(header, rows)
    text += (
        f"\nρ: Spearman correlation of the per-unit angles of the short run and the "
        "complete run (same seed and learning rate); ρ trajectory: the complete run's own "
        "angles after the same number of epochs (free, but on the long schedule); top-K "
        "overlap: share of the units `angle_topk` would pick from the short run's angles that "
        f"it also picks from the complete run's. Mean overlap {100 * mean_overlap:.0f}%: "
        + (
            "the short run picks nearly the same units, so `angle_topk` can use it."
            if mean_overlap >= 0.8
            else "the short run's ranking is not a reliable substitute at this budget."
        )
        + "\n"
    )
    return text


def _ci(
    iv: Any, scale: float = 100.0, digits: int = 1, bounds: tuple[float, float] = (0.0, 1.0)
) -> str:
    """``"81.2 [79.0, 83.4]"``, the interval clipped to the values' range (``bounds``: an
    accuracy lies in [0, 1], a correlation in [−1, 1]); the mean alone for one value."""
    if iv is None or iv.n == 0 or math.isnan(iv.mean):
        return "–"
    if math.isinf(iv.half_width) or math.isnan(iv.half_width):
        return f"{iv.mean * scale:.{digits}f} (one value)"
    lo, hi = max(iv.lo, bounds[0]), min(iv.hi, bounds[1])
    return f"{iv.mean * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def _vs(entry: dict[str, Any], key: str) -> str:
    c = (entry.get(key) or {}).get("test")
    if c is None:
        return "–"
    return f"{c['diff'].fmt()} **{c['outcome']}**"


def _criteria_table(c: dict[str, Any], sd_floor: float = 0.0) -> str:
    ks = c["ks"]
    rows = []
    for e in c["rows"]:
        rows.append(
            [
                f"`{e['criterion']}`",
                f"{e['cost'].mean:.1f}",
                _ci(e["rho"], 1.0, 2, (-1.0, 1.0)),
                *(f"{100 * e['overlap'][k]:.0f}%" for k in ks),
                _ci(e.get("heldout")),
                _ci(e.get("test")),
                _vs(e, "vs_fapft"),
                _vs(e, "vs_full"),
            ]
        )
    for label, row, cost in (
        (f"`{REFERENCE_CRITERION}` (FAPFT, `{c['fapft']}`)", c["fapft_row"], c["reference_cost"]),
        ("full fine-tuning (no selection)", c["full_row"], None),
    ):
        if row is None:
            continue
        rows.append(
            [
                label,
                "–" if cost is None else f"{cost.mean:.1f}",
                "reference" if cost is not None else "–",
                *("100%" if cost is not None else "–" for _ in ks),
                _ci(_iv(row, "heldout", sd_floor)),
                _ci(_iv(row, "test", sd_floor)),
                "–",
                "–",
            ]
        )
    header = [
        "criterion",
        "cost s",
        "Spearman ρ vs full-run angles",
        *(f"top-K overlap K={k}" for k in ks),
        "held-out acc %",
        "test acc %",
        "test − FAPFT (points)",
        "test − full (points)",
    ]
    return _table(header, rows)


def _iv(row: Any, metric: str, sd_floor: float = 0.0) -> Any:
    from pft.reproduce.stats import mean_interval

    return mean_interval(list(row.by_seed[metric].values()), sd_floor=sd_floor)


def _criteria_sentences(a: DatasetAnalysis) -> str:
    c = a.criteria
    rows = [e for e in c["rows"] if e["rho"].n]
    text = []
    if rows:
        best = max(rows, key=lambda e: e["rho"].mean)
        others = [e for e in rows if e is not best]
        clear = all(best["rho"].lo > e["rho"].hi for e in others)
        text.append(
            f"`{best['criterion']}` agrees best with the full-run angle ranking (ρ "
            f"{_ci(best['rho'], 1.0, 2, (-1.0, 1.0))} over {best['rho'].n} seed(s))"
            + (
                ", its interval above every other criterion's."
                if clear and others
                else "; its interval overlaps the others', so which cheap criterion predicts "
                "the ranking best is not shown."
                if others
                else "."
            )
        )
    opposite = [e["criterion"] for e in rows if e["rho"].hi < 0]
    if opposite:
        text.append(
            ", ".join(f"`{x}`" for x in opposite)
            + " rank the units opposite to the full-run angles (ρ interval below zero), so "
            "their largest scores pick units FAPFT's largest-angle order leaves out."
        )
    ran = [e for e in c["rows"] if e.get("row") is not None]
    if ran:
        best = max(ran, key=lambda e: e["heldout"].mean)
        v = (best.get("vs_fapft") or {}).get("test")
        line = (
            f"As the selector, `{best['criterion']}` gives the best held-out accuracy "
            f"({_ci(best['heldout'])}%) at {best['cost'].mean:.1f} s per ranking against "
            f"FAPFT's {c['reference_cost'].mean:.1f} s of complete full fine-tuning"
        )
        line += f"; its test accuracy against FAPFT is **{v['outcome']}**." if v else "."
        text.append(line)
        good = [
            e["criterion"]
            for e in ran
            if (e.get("vs_fapft") or {}).get("test", {}).get("outcome") in (BETTER, EQUIVALENT)
        ]
        if good:
            text.append(
                "Equivalent to or better than FAPFT on test accuracy, at a fraction of its "
                "cost: " + ", ".join(f"`{g}`" for g in good) + "."
            )
        else:
            text.append(
                "No cheap criterion is shown to match FAPFT (equivalent within "
                f"±{100 * c['margin']:.1f} points, or better) at this budget; inconclusive is not "
                "worse: the intervals say how much is unknown."
            )
    if a.guard and not a.guard["ok"]:
        text.append("The study does not beat chance here, so these outcomes support no conclusion.")
    return " ".join(text) + "\n"


def _criteria_text(a: DatasetAnalysis, preset: Preset) -> str:
    c = a.criteria
    if not c or not c["rows"]:
        return "No criteria runs.\n"
    text = (
        f"Every cheap criterion of the registry ({', '.join(CHEAP_CRITERIA)}) against the "
        f"ranking FAPFT uses: the angles after complete full fine-tuning, mean of "
        f"{c['reference_seeds']} seed(s). Cost: seconds per ranking (the short run's training "
        "time for `short_angle`; a complete full run's for the reference). Spearman ρ: each "
        "seed's scores against the same seed's complete full run (`pft.criteria.compare`), "
        f"mean and {LEVEL:.0%} t interval over the seeds (intervals clipped to the values' "
        "range). Top-K overlap: the units "
        "`criterion_topk` picks (largest scores, K per group) from the seeds' mean scores "
        "that FAPFT's largest-angle selection also picks. Accuracy: `criterion_topk` at "
        f"K={c['k']} with the reported seeds at FAPFT's learning rate, mean and {LEVEL:.0%} "
        "t interval; differences paired over the seeds with the study's outcomes (margin "
        f"±{100 * c['margin']:.1f} points).\n\n"
    )
    floor = 1 / a.test_images if getattr(a, "test_images", None) else 0.0
    return text + _criteria_table(c, floor) + "\n" + _criteria_sentences(a)


def _soup_table(a: DatasetAnalysis) -> str:
    rows = []
    for r in soup_rows(a.soups):

        def cell(key: str, row: dict = r) -> str:
            v = row.get(key)
            return f"{_pct(v['test'])} / {_pct(v['shift'])}" if v else "= uniform"

        rows.append(
            [
                r["name"],
                r["n"],
                _params(r["tuned_params"]),
                cell("best"),
                cell("mean"),
                *(
                    f"{cell(m)} ({r['greedy_size']} kept)" if m == GREEDY_SOUP else cell(m)
                    for m in STUDY_SOUPS
                ),
            ]
        )
    return _table(
        [
            "soup",
            "ingredients",
            "tuned params",
            "best ingredient",
            "mean ingredient",
            *STUDY_SOUPS,
        ],
        rows,
    )


def _claim3_text(a: DatasetAnalysis) -> str:
    c = a.verdicts["claim3"]
    if not c.get("rows"):
        return "No soups.\n"
    text = (
        "Deciding comparisons: each soup of partially fine-tuned ingredients against the soup "
        "of fully fine-tuned ones with the same number of ingredients, under every merge "
        f"method of the lab ({', '.join(c['methods'])}), on test and on the shift sets. A "
        "soup is one model, so its interval is a noise interval: t quantile × the "
        "seed-to-seed standard deviation of single runs of both sides (each at least the "
        "sampling standard deviation of an accuracy on the test set), combined. Merge "
        "methods that equal the uniform soup on both sides are not repeated. A pair "
        "supports the claim when both accuracies do (better, or equivalent with fewer tuned "
        "parameters).\n\n"
    )
    comps = [x for p in c["pairs"] for x in p["comps"].values()]
    text += _verdict_table(comps)
    if c["unmatched"]:
        text += (
            "\nNot compared (ingredient count differs from the full soup's): "
            + ", ".join(f"`{n}`" for n in c["unmatched"])
            + ".\n"
        )
    text += "\nEvery soup against its best ingredient (by held-out; informative):\n\n"
    text += _verdict_table(c["vs_best"])
    return text + "\n" + _verdict_line(a, c)


def _summary(analyses: Sequence[DatasetAnalysis]) -> str:
    paper = {
        "claim1": "ATTN-only 93.84 and FFN-only 93.98 vs full 93.51 (CIFAR-100, ViT-B/16)",
        "claim2": "FAPFT 94.30 with 49.69M of 85.88M parameters (CIFAR-100)",
        "claim3": "soups of partially fine-tuned models: better accuracy and generalisation "
        "with fewer tuned parameters (no numbers in our summary of the paper)",
    }
    names = {
        "claim1": "1. Partial beats full, and which layers matter",
        "claim2": "2. The fine-tuned angle picks good layers",
        "claim3": "3. Partial fine-tuning soups generalise better",
    }
    rows = []
    for key, title in names.items():
        ours = "; ".join(f"`{a.dataset}`: {a.verdicts[key]['verdict']}" for a in analyses)
        rows.append([title, paper[key], ours])
    text = _table(["claim", "paper", "our verdict"], rows)
    for a in analyses:
        if a.guard and not a.guard["ok"]:
            text += f"\nNo verdict on `{a.dataset}`: {'; '.join(a.guard['reasons'])}.\n"
    return text


def write_report(
    path: Path,
    preset: Preset,
    analyses: Sequence[DatasetAnalysis],
    figures: dict[str, dict[str, Path]],
    meta: dict[str, Any],
) -> Path:
    """Writes the report to ``path`` (figure links relative to it); returns the path."""
    path = Path(path)
    out = [
        "# Reproduction study: partial fine-tuning on the built-in backbone\n",
        "Ye et al., *Partial Fine-Tuning: A Successor to Full Fine-Tuning for Vision "
        "Transformers* (arXiv 2312.15681), tested on the offline backbone "
        f"`{preset.model}`. Written by `pft reproduce` from the run folders in "
        f"`{meta.get('study_dir', '?')}`; every number below was measured by that command, "
        "except the paper's, which are quoted from the paper for reference (they are for "
        "ViT-B/16 on CIFAR-100, a different scale).\n",
    ]
    if meta.get("preamble"):
        out.append(meta["preamble"] + "\n")
    out.append("## The three claims at a glance\n")
    out.append(_summary(analyses))
    margin = getattr(preset, "margin", 0.01)
    out.append("\n" + OUTCOMES_TEXT.format(level=f"{LEVEL:.0%}", margin=f"{100 * margin:.1f}"))
    out.append(_setup(preset, meta))
    for a in analyses:
        figs = figures.get(a.dataset, {})
        out.append(f"## `{a.dataset}`\n")
        out.append(_guard_text(a))
        out.append("### Claim 1: partial against full fine-tuning\n")
        out.append(
            "Mean ± sample standard deviation over the reported seeds at the chosen learning rate; "
            "★ marks the Pareto front (no strategy has fewer tuned parameters and a "
            "higher mean test accuracy). Shift accuracy is the mean over the shift sets.\n"
        )
        out.append(_strategy_table(a))
        out.append(_plateau_text(a))
        out.append(_link(figs.get("accuracy"), path, f"{a.dataset} accuracy vs parameters"))
        out.append(_claim1_text(a))
        out.append(
            f"\nHeld-out accuracy (%) of the learning-rate grid (selection seed "
            f"{SELECTION_SEED}, not reported); the best rate per strategy is used for the "
            "table above:\n"
        )
        out.append(_lr_table(a))
        out.append("\n### Claim 2: fine-tuned angles\n")
        out.append(_link(figs.get("angles"), path, f"{a.dataset} angle heatmap"))
        out.append("Stability of the angle ranking across seeds (full fine-tuning runs):\n")
        out.append(_stability(a))
        out.append("\n" + _claim2_text(a))
        out.append("\n### Cheap angles (new here)\n")
        out.append(_cheap(a, preset))
        out.append(_link(figs.get("cheap"), path, f"{a.dataset} cheap angles"))
        out.append("\n### Which cheap criterion?\n")
        out.append(_criteria_text(a, preset))
        out.append(_link(figs.get("criteria"), path, f"{a.dataset} cheap criteria"))
        out.append("\n### Claim 3: soups\n")
        out.append(
            "Cells are test / mean shift accuracy (%). Ingredients share the pre-trained "
            "start and head initialisation; each soup has the reported seeds' runs at the "
            "chosen learning rate (the mixed soup alternates its strategies over the seeds), "
            "so every soup has the same number of ingredients; the "
            "greedy soup adds ingredients in held-out order while held-out accuracy "
            "strictly rises. Masked soups average each tensor only over the ingredients "
            "that tuned it (identical to uniform when all tuned the same tensors).\n"
        )
        out.append(_soup_table(a))
        out.append(_link(figs.get("soups"), path, f"{a.dataset} soups"))
        out.append(_claim3_text(a))
    out.append("\n## The paper's numbers (for reference)\n")
    out.append(
        _table(
            ["method (ViT-B/16, CIFAR-100)", "top-1 %", "tuned params"],
            [[m, f"{acc:.2f}", p] for m, acc, p in PAPER_CIFAR100],
        )
    )
    out.append(
        f"\nFGVC mean: full {PAPER_FGVC_MEAN[FULL]}, ATTN-only "
        f"{PAPER_FGVC_MEAN[ATTN_ONLY]}, FFN-only {PAPER_FGVC_MEAN[FFN_ONLY]}. "
        f"Soups reference: {PAPER_SOUPS}.\n"
    )
    out.append(RUNNING)
    if meta.get("cost"):
        out.append("\n## Cost\n")
        out.append(meta["cost"] + "\n")
    if meta.get("caveats"):
        out.append("\n## Caveats\n")
        out.append(meta["caveats"] + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(path)
    return path

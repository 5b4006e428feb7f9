"""Writes the study's Markdown report: setup, claim-by-claim verdicts with the paper's numbers
beside ours, tables of mean ± spread, and the figures (`pft.reproduce.figures`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pft.reproduce.analysis import DatasetAnalysis, soup_rows
from pft.reproduce.plan import (
    ATTN_ONLY,
    FFN_ONLY,
    FULL,
    GREEDY_SOUP,
    STUDY_SOUPS,
    Preset,
    cheap_epochs,
)
from pft.reproduce.stats import spread

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
pft reproduce --preset reduced --threads 1 --report docs/REPRODUCTION.md   # ~35 min, digits
pft reproduce --preset full --report docs/REPRODUCTION.md                  # both targets
pft reproduce --preset full --report-only --report docs/REPRODUCTION.md    # report only
```

Each run has its own folder under `--out` (default `$PFT_DATA_DIR/reproduce/PRESET`); running
the command again skips finished runs and resumes an interrupted one from its last epoch.
`--seeds`, `--epochs` and `--dataset` override the preset (the report names the overrides).
The `angle_topk` runs use the mean angles of every seed's full run, so adding seeds re-runs them
(their configuration changed); other finished runs are kept.
`python benchmarks/reproduce.py` takes the same options. `--threads 1` is fastest on a CPU that
other work shares. The built-in backbone must exist first (`pft pretrain`).
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


def _than(word: str) -> str:
    """``"better than"``, ``"worse than"`` or ``"on par with"``."""
    return "on par with" if word == "similar" else f"{word} than"


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
            f"- Learning-rate grid per family ({grids}): every rate is tried with seed 0 and the "
            "one with the best **held-out** accuracy (a split of the training images, never "
            "trained on) is used for the other seeds. Test accuracy plays no part in any choice.",
            f"- `angle_topk`: K in {', '.join(map(str, preset.ks))} per group, orders "
            f"{' and '.join(preset.orders)}, reference angles = mean over seeds of the chosen full "
            "fine-tuning runs.",
            f"- Shift sets (test images corrupted at severity 3): {', '.join(preset.shifts)}.",
            f"- Cheap angles: short full fine-tuning runs of {cheap} at the full runs' "
            "learning rate.",
            f"- Machine: {meta.get('machine', '?')}. Wall time of the runs: "
            f"{meta.get('wall_minutes', math.nan):.1f} minutes.",
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
            "s / run",
        ],
        rows,
    )


def _lr_table(a: DatasetAnalysis) -> str:
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
    return text


def _claim1_text(a: DatasetAnalysis) -> str:
    c = a.verdicts["claim1"]
    if "vs_full" not in c:
        return "No full fine-tuning runs: nothing to compare.\n"
    parts = []
    for label, v in c["vs_full"].items():
        parts.append(
            f"`{label}` is **{_than(v['word'])}** full fine-tuning ({v['diff']:+.1f} "
            f"points, {_params(v['params'])} vs {_params(c['full_params'])} tuned "
            "parameters)"
        )
    text = "; ".join(parts) + ". "
    text += (
        f"Across the eight manual strategies, mean test accuracy spans "
        f"{c['manual_range_pts']:.1f} points, so which units are tuned matters. "
    )
    if c["manual_better"]:
        text += f"Better than full: {', '.join(f'`{x}`' for x in c['manual_better'])}. "
    if c["manual_similar"]:
        text += f"Within noise of full: {', '.join(f'`{x}`' for x in c['manual_similar'])}. "
    return text + f"**Verdict on `{a.dataset}`: {c['verdict']}.**\n"


def _claim2_text(a: DatasetAnalysis) -> str:
    c = a.verdicts["claim2"]
    if "best_topk" not in c:
        return "No `angle_topk` runs.\n"
    d_full, w_full = c["vs_full"]
    d_man, w_man = c["vs_best_manual"]
    text = (
        f"The best `angle_topk` setting by held-out accuracy, `{c['best_topk']}`, is "
        f"**{_than(w_full)}** full fine-tuning ({d_full:+.1f} points) and {_than(w_man)} the best "
        f"manual strategy by held-out accuracy, `{c['best_manual']}` ({d_man:+.1f}). "
    )
    for k, v in c["orders"].items():
        text += (
            f"At K={k}, smallest-angle units minus largest-angle units: "
            f"{v['smallest_minus_largest']:+.1f} points ({v['word']}). "
        )
    for label, comps in c["same_budget"].items():
        bits = [f"{_than(w)} `{m}` ({d:+.1f})" for m, (d, w) in comps.items()]
        text += f"With the same tuned parameters, `{label}` is {', '.join(bits)}. "
    return text + f"**Verdict on `{a.dataset}`: {c['verdict']}.**\n"


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
    return (
        f"The soup method chosen on held-out accuracy beats the best ingredient (also chosen "
        f"on held-out) on test in {c['wins_test']} of {c['soups']} soups and on the shift "
        f"sets in {c['wins_shift']} of {c['soups']}. "
        f"**Verdict on `{a.dataset}`: {c['verdict']}.**\n"
    )


def _summary(analyses: Sequence[DatasetAnalysis]) -> str:
    paper = {
        "claim1": "ATTN-only 93.84 and FFN-only 93.98 vs full 93.51 (CIFAR-100, ViT-B/16)",
        "claim2": "FAPFT 94.30 with 49.69M of 85.88M parameters (CIFAR-100)",
        "claim3": "soups of partially fine-tuned models beat their ingredients (no numbers "
        "in our summary of the paper)",
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
    return _table(["claim", "paper", "our verdict"], rows)


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
    out.append(_setup(preset, meta))
    for a in analyses:
        figs = figures.get(a.dataset, {})
        out.append(f"## `{a.dataset}`\n")
        out.append("### Claim 1: partial against full fine-tuning\n")
        out.append(
            "Mean ± sample standard deviation over seeds at the chosen learning rate; "
            "★ marks the Pareto front (no strategy has fewer tuned parameters and a "
            "higher mean test accuracy). Shift accuracy is the mean over the shift sets.\n"
        )
        out.append(_strategy_table(a))
        out.append(_link(figs.get("accuracy"), path, f"{a.dataset} accuracy vs parameters"))
        out.append(_claim1_text(a))
        out.append(
            "\nHeld-out accuracy (%) of the learning-rate grid (seed 0); the best rate "
            "per strategy is used for the table above:\n"
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
        out.append("\n### Claim 3: soups\n")
        out.append(
            "Cells are test / mean shift accuracy (%). Ingredients share the pre-trained "
            "start and head initialisation and differ in seed and learning rate; the "
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

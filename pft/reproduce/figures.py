"""The study's figures (matplotlib, Agg backend, small PNGs): accuracy against tuned parameters
with the Pareto front, fine-tuned angle heatmaps, soup bars, the cheap-angle scatter and the
cheap criteria (accuracy against cost, their Spearman matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pft.reproduce.analysis import DatasetAnalysis, soup_rows
from pft.reproduce.plan import FULL, LINEAR_PROBE, MANUAL, STUDY_SOUPS, TOPK

if TYPE_CHECKING:
    from matplotlib import pyplot as plt


def _pyplot():  # noqa: ANN202 (the pyplot module)
    """matplotlib on the Agg backend, imported only when a figure is drawn (the `science`
    extra installs it; the rest of `pft reproduce` does not need it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


DPI = 100
COLORS = {
    FULL: "#d62728",
    LINEAR_PROBE: "#7f7f7f",
    MANUAL: "#1f77b4",
    TOPK: "#2ca02c",
}


def _save(fig: plt.Figure, path: Path, top: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _labels(ax: plt.Axes, a: DatasetAnalysis) -> None:
    """Point labels; labels of points with one parameter count are spread apart vertically."""
    ys = [100 * r.test.mean for r in a.rows]
    gap = 0.05 * ((max(ys) - min(ys)) or 1.0)
    by_x: dict[int, list] = {}
    for r in a.rows:
        by_x.setdefault(r.tuned_params, []).append(r)
    for x, rows in by_x.items():
        last = None
        for r in sorted(rows, key=lambda r: -r.test.mean):
            y = 100 * r.test.mean
            label_y = y if last is None or y < last - gap else last - gap
            last = label_y
            ax.annotate(
                r.label.replace("angle_topk ", "top-k "),
                (x, y),
                xytext=(x * 1.12, label_y),
                textcoords="data",
                fontsize=6.5,
                va="center",
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"},
            )


def accuracy_vs_params(a: DatasetAnalysis, path: Path) -> Path:
    fig, ax = _pyplot().subplots(figsize=(7.5, 4.8))
    for fam, color in COLORS.items():
        rows = [r for r in a.rows if r.family == fam]
        if rows:
            ax.errorbar(
                [r.tuned_params for r in rows],
                [100 * r.test.mean for r in rows],
                yerr=[100 * r.test.std for r in rows],
                fmt="o",
                color=color,
                label=fam,
                capsize=3,
                ms=5,
            )
    _labels(ax, a)
    front = [a.row(label) for label in a.pareto]
    ax.step(
        [r.tuned_params for r in front],
        [100 * r.test.mean for r in front],
        where="post",
        color="black",
        lw=1,
        alpha=0.6,
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel("tuned parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{a.dataset}: accuracy vs tuned parameters (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def angle_heatmap(a: DatasetAnalysis, path: Path) -> Path:
    groups = list(dict.fromkeys(u["group"] for u in a.units))
    depth = 1 + max(u["block"] for u in a.units)
    grid = [[float("nan")] * depth for _ in groups]
    for u in a.units:
        grid[groups.index(u["group"])][u["block"]] = a.angles[u["name"]]
    fig, ax = _pyplot().subplots(figsize=(max(6.5, 0.6 * depth + 1.5), 1.2 + 0.6 * len(groups)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    lo, hi = im.get_clim()
    for gi, row in enumerate(grid):
        for b, v in enumerate(row):
            dark = v < lo + 0.6 * (hi - lo)  # viridis is dark at the low end
            ax.text(
                b,
                gi,
                f"{v:.1f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    ax.set_yticks(range(len(groups)), groups)
    ax.set_xticks(range(depth), [str(b) for b in range(depth)])
    ax.set_xlabel("block")
    ax.set_title(
        f"{a.dataset}: fine-tuned angle (degrees) after full fine-tuning, "
        f"mean of {a.angle_seeds} seeds",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, path)


def soup_bars(a: DatasetAnalysis, path: Path) -> Path:
    rows = soup_rows(a.soups)
    kinds = [
        ("best", "best ingredient"),
        ("mean", "mean ingredient"),
        *((m, m) for m in STUDY_SOUPS),
    ]
    fig, axes = _pyplot().subplots(1, 2, figsize=(9, 3.6), sharey=False)
    width = 0.8 / len(kinds)
    for ax, metric, title in ((axes[0], "test", "test"), (axes[1], "shift", "mean over shifts")):
        for ki, (key, name) in enumerate(kinds):
            xs = [i + ki * width for i, r in enumerate(rows) if key in r]
            ys = [100 * r[key][metric] for r in rows if key in r]
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(rows))],
            [r["name"] for r in rows],
            fontsize=7,
            rotation=10,
        )
        lows = [100 * r[k][metric] for r in rows for k, _ in kinds if k in r]
        if lows:
            ax.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(lows) + 2))
        ax.set_title(f"{a.dataset}: soups, {title} accuracy (%)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=len(names), fontsize=7, frameon=False)
    return _save(fig, path, top=0.92)


def cheap_scatter(a: DatasetAnalysis, path: Path) -> Path:
    pair = a.cheap["pairs"][0]
    fig, ax = _pyplot().subplots(figsize=(4.6, 4.0))
    for group in dict.fromkeys(u["group"] for u in a.units):
        names = [u["name"] for u in a.units if u["group"] == group]
        ax.scatter(
            [pair["full_angles"][n] for n in names],
            [pair["short_angles"][n] for n in names],
            label=group,
            s=18,
        )
    rho = pair["rho"]["all"]
    ax.set_xlabel(f"angle after the complete run ({pair['of_epochs']} epochs)")
    ax.set_ylabel(f"angle after a short run ({pair['epochs']} epochs)")
    ax.set_title(f"{a.dataset}: cheap angles, seed {pair['seed']}, ρ={rho:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def criteria_figure(a: DatasetAnalysis, path: Path) -> Path:
    """Left: test accuracy of each selector (mean, 95% t interval) against its cost; right: the
    Spearman matrix of the criteria's rankings (the seeds' mean scores, the reference angles)."""
    import math

    from pft.reproduce.stats import mean_interval

    c = a.criteria
    fig, (ax, hm) = _pyplot().subplots(1, 2, figsize=(10, 4.2))
    points = [(e["criterion"], e["cost"].mean, e.get("test")) for e in c["rows"] if e.get("test")]
    if c["fapft_row"] is not None:
        fapft_test = mean_interval(list(c["fapft_row"].by_seed["test"].values()))
        points.append((f"FAPFT ({c['fapft']})", c["reference_cost"].mean, fapft_test))
    for i, (name, cost, iv) in enumerate(points):
        finite = not (math.isinf(iv.half_width) or math.isnan(iv.half_width))
        lo, hi = max(iv.lo, 0.0), min(iv.hi, 1.0)  # an accuracy's range
        fapft = name.startswith("FAPFT")
        ax.errorbar(
            [max(cost, 1e-2)],
            [100 * iv.mean],
            yerr=[[100 * (iv.mean - lo)], [100 * (hi - iv.mean)]] if finite else None,
            fmt="*" if fapft else "o",
            ms=9 if fapft else 6,
            capsize=3,
            label=name,
            color="black" if fapft else f"C{i}",
        )
    if c["full_row"] is not None:
        full = c["full_row"].test.mean
        ax.axhline(100 * full, color=COLORS[FULL], lw=1, ls="--", label="full fine-tuning")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("cost of the ranking (s, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{a.dataset}: top-K per group, K={c['k']} (95% t interval)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    names, rho = c["matrix"]["names"], c["matrix"]["rho"]
    im = hm.imshow(rho, vmin=-1, vmax=1, cmap="RdBu_r")
    for i, row in enumerate(rho):
        for j, v in enumerate(row):
            dark = not math.isnan(v) and abs(v) > 0.6
            text = "–" if math.isnan(v) else f"{v:.2f}"
            hm.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "k"
            )
    hm.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    hm.set_yticks(range(len(names)), names, fontsize=7)
    hm.set_title("Spearman ρ between the criteria's rankings", fontsize=9)
    fig.colorbar(im, ax=hm, fraction=0.04)
    return _save(fig, path)


def write_figures(a: DatasetAnalysis, folder: Path) -> dict[str, Path]:
    """Every figure that the dataset's results support, keyed by kind."""
    folder = Path(folder)
    out = {}
    if a.rows:
        out["accuracy"] = accuracy_vs_params(a, folder / f"{a.dataset}_accuracy_vs_params.png")
    if a.units and a.angles:
        out["angles"] = angle_heatmap(a, folder / f"{a.dataset}_angles.png")
    if a.soups:
        out["soups"] = soup_bars(a, folder / f"{a.dataset}_soups.png")
    if a.cheap["pairs"]:
        out["cheap"] = cheap_scatter(a, folder / f"{a.dataset}_cheap_angles.png")
    if a.criteria and a.criteria["rows"]:
        out["criteria"] = criteria_figure(a, folder / f"{a.dataset}_criteria.png")
    return out

"""Plotly figures for the dashboard: pure functions from plain data to ``go.Figure``.

Nothing here talks to the backend or to Streamlit, so every figure is testable without a
browser. Grids put blocks on rows (block 0 on top) and unit kinds or tensor roles on columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.layout import (
    TENSOR_ROLES,
    block_labels,
    depth_of,
    groups_of,
    tensor_blocks,
    tensor_cell,
    unit_grid,
)
from pft.units import UNIT_KINDS

TUNED_COLOR = "#d62728"
FROZEN_COLOR = "#e8e8e8"
ACCEPTED_COLOR = "#2ca02c"
REJECTED_COLOR = "#d62728"
ANGLE_SCALE = "Viridis"
DIFF_SCALE = "RdBu_r"


def _grid_axes(fig: go.Figure, depth: int) -> None:
    fig.update_yaxes(autorange="reversed", title_text="block")
    fig.update_layout(height=max(260, 60 + 28 * depth), margin=dict(l=10, r=10, t=60, b=10))


def _fmt_params(n: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def unit_selection_grid(unit_map: Mapping, selections: Sequence[Mapping]) -> go.Figure:
    """Which units each strategy tunes: one blocks x ATTN/FFN panel per strategy.

    ``selections``: ``{"name", "units", "tuned_params", "tuned_fraction"}`` per strategy
    (``pft.strategies.Selection.to_dict()``); tuned cells are 1, frozen cells 0.
    """
    depth = int(unit_map["depth"])
    n = max(1, len(selections))
    titles = [
        f"{s['name']}<br>{_fmt_params(int(s.get('tuned_params', 0)))} "
        f"({100 * float(s.get('tuned_fraction', 0)):.1f}%)"
        for s in selections
    ] or ["no strategy selected"]
    fig = make_subplots(
        rows=1,
        cols=n,
        shared_yaxes=True,
        subplot_titles=titles,
        horizontal_spacing=min(0.04, 0.5 / n),
    )
    rows = block_labels(depth)
    for i, sel in enumerate(selections, start=1):
        tuned = set(sel.get("units", []))
        z = unit_grid({u["name"]: float(u["name"] in tuned) for u in unit_map["units"]}, depth)
        text = [["tuned" if v else "frozen" for v in row] for row in z]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(UNIT_KINDS),
                y=rows,
                zmin=0,
                zmax=1,
                showscale=False,
                name=sel["name"],
                colorscale=[[0, FROZEN_COLOR], [1, TUNED_COLOR]],
                xgap=2,
                ygap=2,
                text=text,
                hovertemplate="%{y} %{x}: %{text}<extra>" + sel["name"] + "</extra>",
            ),
            row=1,
            col=i,
        )
    _grid_axes(fig, depth)
    fig.update_yaxes(title_text=None)
    fig.update_yaxes(title_text="block", row=1, col=1)
    fig.update_layout(
        title=dict(text="Tuned units (red) per strategy; the head is always tuned", y=0.98),
        margin=dict(l=10, r=10, t=110, b=10),
        height=max(300, 110 + 28 * depth),
    )
    return fig


def pareto_front(
    points: Sequence[Mapping], x: str = "tuned_params", y: str = "accuracy"
) -> list[int]:
    """Indices of the points no other point beats (fewer or equal params and higher accuracy,
    or fewer params and equal accuracy), sorted by ``x``."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            (q[x] <= p[x] and q[y] >= p[y]) and (q[x] < p[x] or q[y] > p[y])
            for j, q in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][x], -points[i][y]))


def accuracy_vs_params(points: Sequence[Mapping]) -> go.Figure:
    """Accuracy against tuned parameters, one marker per strategy, the Pareto front as a line.

    ``points``: ``{"strategy", "tuned_params", "accuracy", "spread"?}`` (accuracy in 0-1).
    """
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[p["tuned_params"] for p in points],
            y=[p["accuracy"] for p in points],
            error_y=dict(type="data", array=[p.get("spread") or 0 for p in points], visible=True),
            mode="markers+text",
            text=[p["strategy"] for p in points],
            textposition="top center",
            name="strategies",
            marker=dict(size=10),
            hovertemplate="%{text}<br>tuned params %{x:,}<br>accuracy %{y:.4f}<extra></extra>",
        )
    )
    front = pareto_front(points)
    fig.add_trace(
        go.Scatter(
            x=[points[i]["tuned_params"] for i in front],
            y=[points[i]["accuracy"] for i in front],
            text=[points[i]["strategy"] for i in front],
            mode="lines+markers",
            name="Pareto front",
            line=dict(color=TUNED_COLOR, dash="dash"),
            marker=dict(size=14, symbol="circle-open", color=TUNED_COLOR),
            hovertemplate="Pareto: %{text}<extra></extra>",
        )
    )
    fig.update_xaxes(type="log", title_text="tuned parameters (log)")
    fig.update_yaxes(title_text="test accuracy")
    fig.update_layout(title_text="Accuracy vs tuned parameters", height=420)
    return fig


def training_curves(metrics: Sequence[Mapping], title: str = "Training curves") -> go.Figure:
    """Per-epoch accuracy (held-out, test) and train loss (right axis) of one job."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    epochs = [m["epoch"] for m in metrics]
    for key, label in (("heldout_acc", "held-out accuracy"), ("test_acc", "test accuracy")):
        if any(m.get(key) is not None for m in metrics):
            fig.add_trace(
                go.Scatter(
                    x=epochs, y=[m.get(key) for m in metrics], name=label, mode="lines+markers"
                ),
                secondary_y=False,
            )
    if any(m.get("train_loss") is not None for m in metrics):
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[m.get("train_loss") for m in metrics],
                name="train loss",
                mode="lines",
                line=dict(dash="dot"),
            ),
            secondary_y=True,
        )
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="accuracy", secondary_y=False)
    fig.update_yaxes(title_text="loss", secondary_y=True)
    fig.update_layout(title_text=title, height=360)
    return fig


def compare_curves(runs: Mapping[str, Sequence[Mapping]], metric: str = "test_acc") -> go.Figure:
    """One line per run (label -> per-epoch metrics) for one metric."""
    fig = go.Figure()
    for label, metrics in runs.items():
        fig.add_trace(
            go.Scatter(
                x=[m["epoch"] for m in metrics],
                y=[m.get(metric) for m in metrics],
                name=label,
                mode="lines+markers",
            )
        )
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text=metric.replace("_", " "))
    fig.update_layout(title_text=metric.replace("_", " ") + " per epoch", height=360)
    return fig


def _angle_heatmap(
    z, x, y, *, name: str, scale: str = ANGLE_SCALE, zmid: float | None = None, unit: str = "°"
) -> go.Heatmap:
    text = [["" if v is None else f"{v:.2f}" for v in row] for row in z]
    return go.Heatmap(
        z=z,
        x=list(x),
        y=y,
        colorscale=scale,
        zmid=zmid,
        name=name,
        text=text,
        texttemplate="%{text}",
        xgap=2,
        ygap=2,
        colorbar=dict(title=dict(text=unit)),
        hovertemplate="%{y} %{x}: %{z:.3f}" + unit + "<extra>" + name + "</extra>",
    )


def unit_angle_heatmap(
    angles: Mapping[str, float],
    unit_map: Mapping | None = None,
    title: str = "Fine-tuned angle per unit",
) -> go.Figure:
    """Per-unit fine-tuned angles in degrees on a blocks x ATTN/FFN grid."""
    depth = depth_of(angles, unit_map)
    fig = go.Figure(
        _angle_heatmap(unit_grid(angles, depth), UNIT_KINDS, block_labels(depth), name="angle")
    )
    _grid_axes(fig, depth)
    fig.update_layout(title_text=title)
    return fig


def tensor_grid(
    angles: Mapping[str, float], unit_map: Mapping | None = None
) -> tuple[list[list[float | None]], list[list[str]]]:
    """A blocks x (qkv, proj, fc1, fc2, norms) matrix and the tensors behind each cell.

    A cell holding several tensors shows the largest angle among its weights (biases only when
    it has no weight: a bias that starts at zero turns by large angles that say little); the
    hover text lists every tensor.
    """
    blocks = tensor_blocks(unit_map)
    cells: dict[tuple[int, str], list[tuple[str, float]]] = {}
    for name, value in angles.items():
        cell = tensor_cell(name, blocks)
        if cell is not None and value is not None:
            cells.setdefault(cell, []).append((name, float(value)))
    depth = (
        int(unit_map["depth"])
        if unit_map and unit_map.get("depth")
        else (1 + max((b for b, _ in cells), default=-1))
    )
    z: list[list[float | None]] = [[None] * len(TENSOR_ROLES) for _ in range(depth)]
    hover = [[""] * len(TENSOR_ROLES) for _ in range(depth)]
    for (block, role), items in cells.items():
        if block < depth:
            col = TENSOR_ROLES.index(role)
            weights = [v for n, v in items if not n.endswith("bias")]
            z[block][col] = max(weights or [v for _, v in items])
            hover[block][col] = "<br>".join(f"{n}: {v:.3f}°" for n, v in sorted(items))
    return z, hover


def tensor_angle_heatmap(
    angles: Mapping[str, float],
    unit_map: Mapping | None = None,
    title: str = "Fine-tuned angle per tensor",
) -> go.Figure:
    """Per-tensor angles on a blocks x qkv/proj/fc1/fc2/norms grid, with hover values."""
    z, hover = tensor_grid(angles, unit_map)
    depth = len(z)
    trace = _angle_heatmap(z, TENSOR_ROLES, block_labels(depth), name="angle")
    trace.update(
        customdata=hover, hovertemplate="%{y} %{x}: %{z:.3f}°<br>%{customdata}<extra>angle</extra>"
    )
    fig = go.Figure(trace)
    _grid_axes(fig, depth)
    fig.update_layout(title_text=title)
    return fig


def angle_difference_heatmap(
    a: Mapping[str, float],
    b: Mapping[str, float],
    labels: tuple[str, str] = ("A", "B"),
    unit_map: Mapping | None = None,
) -> go.Figure:
    """Per-unit angle difference ``b - a`` on a diverging scale centred on zero."""
    shared = set(a) & set(b)
    diff = {n: float(b[n]) - float(a[n]) for n in shared if a[n] is not None and b[n] is not None}
    depth = depth_of(shared, unit_map)
    fig = go.Figure(
        _angle_heatmap(
            unit_grid(diff, depth),
            UNIT_KINDS,
            block_labels(depth),
            name=f"{labels[1]} − {labels[0]}",
            scale=DIFF_SCALE,
            zmid=0,
        )
    )
    _grid_axes(fig, depth)
    fig.update_layout(title_text=f"Angle difference: {labels[1]} − {labels[0]} (degrees)")
    return fig


def angle_trajectory(
    per_epoch: Mapping[int, Mapping[str, float]], unit_map: Mapping | None = None
) -> go.Figure:
    """Per-unit angles over epochs: one animation frame per epoch, a slider and a play button.

    The colour scale is fixed across epochs so that frames are comparable.
    """
    epochs = sorted(per_epoch)
    names = {n for e in epochs for n in per_epoch[e]}
    depth = depth_of(names, unit_map)
    values = [v for e in epochs for v in per_epoch[e].values() if v is not None]
    zmax = max(values, default=1.0) or 1.0
    y = block_labels(depth)

    def trace(epoch: int) -> go.Heatmap:
        heat = _angle_heatmap(unit_grid(per_epoch[epoch], depth), UNIT_KINDS, y, name="angle")
        heat.update(zmin=0, zmax=zmax)
        return heat

    frames = [go.Frame(data=[trace(e)], name=str(e)) for e in epochs]
    fig = go.Figure(data=[trace(epochs[-1])] if epochs else [], frames=frames)
    steps = [
        dict(
            method="animate",
            label=str(e),
            args=[[str(e)], dict(mode="immediate", frame=dict(duration=0, redraw=True))],
        )
        for e in epochs
    ]
    fig.update_layout(
        title_text="Angle trajectory over epochs",
        sliders=[
            dict(active=max(0, len(epochs) - 1), steps=steps, currentvalue=dict(prefix="epoch "))
        ],
        updatemenus=[
            dict(
                type="buttons",
                showactive=False,
                x=0,
                y=-0.05,
                buttons=[
                    dict(
                        label="▶ play",
                        method="animate",
                        args=[None, dict(frame=dict(duration=600, redraw=True), fromcurrent=False)],
                    ),
                ],
            )
        ],
    )
    _grid_axes(fig, depth)
    fig.update_layout(height=max(320, 120 + 28 * depth))
    return fig


def ranked_angle_bars(
    angles: Mapping[str, float], unit_map: Mapping | None = None, selected: Sequence[str] = ()
) -> go.Figure:
    """One panel per group: units ranked by angle (largest on top), selected units highlighted."""
    groups = groups_of(unit_map, angles)
    chosen = set(selected)
    fig = make_subplots(rows=1, cols=max(1, len(groups)), subplot_titles=list(groups) or [""])
    for i, (group, units) in enumerate(groups.items(), start=1):
        ranked = sorted(
            (u for u in units if angles.get(u) is not None), key=lambda u: angles[u], reverse=True
        )
        fig.add_trace(
            go.Bar(
                x=[angles[u] for u in ranked],
                y=ranked,
                orientation="h",
                name=group,
                marker_color=[TUNED_COLOR if u in chosen else "#7f7f7f" for u in ranked],
                hovertemplate="%{y}: %{x:.3f}°<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=i,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_xaxes(title_text="angle (°)")
    fig.update_layout(
        title_text="Units ranked by angle per group (red: selected)",
        height=max(300, 80 + 22 * max((len(u) for u in groups.values()), default=1)),
    )
    return fig


def greedy_trace(trace: Sequence[Mapping]) -> go.Figure:
    """Greedy soup: held-out accuracy of each candidate soup in the order tried.

    ``trace``: ``{"step"?, "ingredient", "score", "accepted"}`` per candidate; the line is the
    best accepted score so far.
    """
    steps = [t.get("step", i) for i, t in enumerate(trace)]
    labels = [f"job {t['ingredient']}" for t in trace]
    fig = go.Figure()
    for accepted, color, symbol, name in (
        (True, ACCEPTED_COLOR, "circle", "accepted"),
        (False, REJECTED_COLOR, "x", "rejected"),
    ):
        idx = [i for i, t in enumerate(trace) if bool(t["accepted"]) is accepted]
        fig.add_trace(
            go.Scatter(
                x=[steps[i] for i in idx],
                y=[trace[i]["score"] for i in idx],
                text=[labels[i] for i in idx],
                mode="markers",
                name=name,
                marker=dict(color=color, symbol=symbol, size=12),
                hovertemplate="step %{x}: %{text}<br>held-out %{y:.4f}<extra>" + name + "</extra>",
            )
        )
    best, running = None, []
    for t in trace:
        if t["accepted"]:
            best = t["score"] if best is None else max(best, t["score"])
        running.append(best)
    fig.add_trace(
        go.Scatter(
            x=steps,
            y=running,
            mode="lines",
            name="soup so far",
            line=dict(color=ACCEPTED_COLOR, shape="hv"),
        )
    )
    fig.update_xaxes(title_text="ingredient tried (by held-out accuracy)", dtick=1)
    fig.update_yaxes(title_text="held-out accuracy")
    fig.update_layout(title_text="Greedy soup trace", height=360)
    return fig


def soup_comparison(scores: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Grouped bars: each model (soup, best ingredient, uniform soup) on each evaluation set.

    ``scores``: model label -> evaluation set (``in-distribution``, shift names) -> accuracy.
    """
    sets: list[str] = []
    for per_set in scores.values():
        sets += [s for s in per_set if s not in sets]
    fig = go.Figure(
        [
            go.Bar(
                name=label,
                x=sets,
                y=[per_set.get(s) for s in sets],
                text=[None if per_set.get(s) is None else f"{per_set[s]:.3f}" for s in sets],
                textposition="outside",
                hovertemplate="%{x}: %{y:.4f}<extra>" + label + "</extra>",
            )
            for label, per_set in scores.items()
        ]
    )
    fig.update_layout(
        barmode="group", title_text="Soup vs best ingredient vs uniform soup", height=380
    )
    fig.update_yaxes(title_text="accuracy")
    return fig

"""Plotly figures for the dashboard: pure functions from plain data to ``go.Figure``.

Nothing here talks to the backend or to Streamlit, so every figure is testable without a
browser. Grids (`dashboard.layout.Grid`) put blocks on rows (block 0 on top) and unit kinds or
tensor parts on columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from contract.api import AngleRow, SelectionPublic
from dashboard.layout import Grid

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


def unit_selection_grid(grid: Grid, selections: Sequence[SelectionPublic]) -> go.Figure:
    """Which units each strategy tunes: one blocks x kinds panel per strategy (the API's
    selections, `POST /preview` or `GET /models/{m}/units`); tuned cells are 1, frozen 0."""
    n = max(1, len(selections))
    titles = [
        f"{s.name}<br>{_fmt_params(s.tuned_params)} ({100 * s.tuned_fraction:.1f}%)"
        for s in selections
    ] or ["no strategy selected"]
    fig = make_subplots(
        rows=1,
        cols=n,
        shared_yaxes=True,
        subplot_titles=titles,
        horizontal_spacing=min(0.04, 0.5 / n),
    )
    for i, sel in enumerate(selections, start=1):
        tuned = set(sel.units)
        z = grid.matrix({name: float(name in tuned) for name in grid.cells})
        text = [["" if v is None else "tuned" if v else "frozen" for v in row] for row in z]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(grid.columns),
                y=grid.rows,
                zmin=0,
                zmax=1,
                showscale=False,
                name=sel.name,
                colorscale=[[0, FROZEN_COLOR], [1, TUNED_COLOR]],
                xgap=2,
                ygap=2,
                text=text,
                hovertemplate="%{y} %{x}: %{text}<extra>" + sel.name + "</extra>",
            ),
            row=1,
            col=i,
        )
    _grid_axes(fig, grid.depth)
    fig.update_yaxes(title_text=None)
    fig.update_yaxes(title_text="block", row=1, col=1)
    fig.update_layout(
        title=dict(text="Tuned units (red) per strategy; the head is always tuned", y=0.98),
        margin=dict(l=10, r=10, t=110, b=10),
        height=max(300, 110 + 28 * grid.depth),
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
    angles: Mapping[str, float], grid: Grid, title: str = "Fine-tuned angle per unit"
) -> go.Figure:
    """Per-unit fine-tuned angles in degrees on a blocks x kinds grid."""
    fig = go.Figure(_angle_heatmap(grid.matrix(angles), grid.columns, grid.rows, name="angle"))
    _grid_axes(fig, grid.depth)
    fig.update_layout(title_text=title)
    return fig


def tensor_cells(
    rows: Sequence[AngleRow], grid: Grid
) -> tuple[list[list[float | None]], list[list[str]]]:
    """A blocks x parts matrix and the tensors behind each cell.

    A cell holding several tensors shows the largest angle among its weights (biases only when
    it has no weight: a bias that starts at zero turns by large angles that say little); the
    hover text lists every tensor.
    """
    cells: dict[tuple[int, int], list[tuple[str, float]]] = {}
    for row in rows:
        if row.name in grid.cells:
            cells.setdefault(grid.cells[row.name], []).append((row.name, row.angle_deg))
    z: list[list[float | None]] = [[None] * len(grid.columns) for _ in range(grid.depth)]
    hover = [[""] * len(grid.columns) for _ in range(grid.depth)]
    for (block, col), items in cells.items():
        weights = [v for n, v in items if not n.endswith("bias")]
        z[block][col] = max(weights or [v for _, v in items])
        hover[block][col] = "<br>".join(f"{n}: {v:.3f}°" for n, v in sorted(items))
    return z, hover


def tensor_angle_heatmap(
    rows: Sequence[AngleRow], grid: Grid, title: str = "Fine-tuned angle per tensor"
) -> go.Figure:
    """Per-tensor angles on a blocks x parts grid, with hover values."""
    z, hover = tensor_cells(rows, grid)
    trace = _angle_heatmap(z, grid.columns, grid.rows, name="angle")
    trace.update(
        customdata=hover, hovertemplate="%{y} %{x}: %{z:.3f}°<br>%{customdata}<extra>angle</extra>"
    )
    fig = go.Figure(trace)
    _grid_axes(fig, grid.depth)
    fig.update_layout(title_text=title)
    return fig


def angle_difference_heatmap(
    a: Mapping[str, float],
    b: Mapping[str, float],
    grid: Grid,
    labels: tuple[str, str] = ("A", "B"),
) -> go.Figure:
    """Per-unit angle difference ``b - a`` on a diverging scale centred on zero."""
    diff = {n: b[n] - a[n] for n in set(a) & set(b)}
    fig = go.Figure(
        _angle_heatmap(
            grid.matrix(diff),
            grid.columns,
            grid.rows,
            name=f"{labels[1]} − {labels[0]}",
            scale=DIFF_SCALE,
            zmid=0,
        )
    )
    _grid_axes(fig, grid.depth)
    fig.update_layout(title_text=f"Angle difference: {labels[1]} − {labels[0]} (degrees)")
    return fig


def angle_trajectory(per_epoch: Mapping[int, Mapping[str, float]], grid: Grid) -> go.Figure:
    """Per-unit angles over epochs: one animation frame per epoch, a slider and a play button.

    The colour scale is fixed across epochs so that frames are comparable.
    """
    epochs = sorted(per_epoch)
    values = [v for e in epochs for v in per_epoch[e].values()]
    zmax = max(values, default=1.0) or 1.0

    def trace(epoch: int) -> go.Heatmap:
        heat = _angle_heatmap(grid.matrix(per_epoch[epoch]), grid.columns, grid.rows, name="angle")
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
    _grid_axes(fig, grid.depth)
    fig.update_layout(height=max(320, 120 + 28 * grid.depth))
    return fig


def ranked_angle_bars(
    angles: Mapping[str, float],
    groups: Mapping[str, Sequence[str]],
    selected: Sequence[str] = (),
) -> go.Figure:
    """One panel per group: units ranked by angle (largest on top), selected units highlighted."""
    chosen = set(selected)
    fig = make_subplots(rows=1, cols=max(1, len(groups)), subplot_titles=list(groups) or [""])
    for i, (group, units) in enumerate(groups.items(), start=1):
        ranked = sorted((u for u in units if u in angles), key=lambda u: angles[u], reverse=True)
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


def soup_trace(trace: Sequence[Mapping]) -> go.Figure:
    """A soup built ingredient by ingredient: held-out accuracy of each candidate soup in the
    order tried (Wortsman et al. 2022).

    ``trace``: ``{"step", "ingredient", "score", "accepted"}`` per candidate
    (`dashboard.soup_view.trace_points`); the line is the best accepted score so far.
    """
    steps = [t["step"] for t in trace]
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
    fig.update_layout(title_text="Soup trace: candidates in the order tried", height=360)
    return fig


def soup_comparison(scores: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Grouped bars: each model (soup, best ingredient, other soups) on each evaluation set.

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
        barmode="group", title_text="Soup vs best ingredient vs other soups", height=380
    )
    fig.update_yaxes(title_text="accuracy")
    return fig


def mixing_heatmap(matrix: Mapping) -> go.Figure:
    """A merge's per-unit mixing weights: units on rows (depth order, as the merge reports
    them), ingredients on columns; a blank cell is a unit that ingredient did not tune.

    ``matrix``: `dashboard.soup_view.mixing_matrix` (``weight``, ``units``, ``ingredients``,
    ``z``, ``tuners``).
    """
    weight = matrix["weight"]
    n = len(matrix["ingredients"])
    hover = [
        [
            f"{unit} · job {job}: {weight} "
            + ("—" if v is None else f"{v:.4g}")
            + f"<br>tuned by {tuners} of {n} ingredients"
            for job, v in zip(matrix["ingredients"], row, strict=True)
        ]
        for unit, row, tuners in zip(matrix["units"], matrix["z"], matrix["tuners"], strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=matrix["z"],
            x=[f"job {i}" for i in matrix["ingredients"]],
            y=list(matrix["units"]),
            text=hover,
            hovertemplate="%{text}<extra></extra>",
            colorscale=ANGLE_SCALE,
            colorbar=dict(title=dict(text=weight)),
            xgap=2,
            ygap=1,
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="unit")
    fig.update_xaxes(title_text="ingredient", type="category")
    fig.update_layout(
        title_text=f"Mixing weight per unit ({weight})",
        height=max(280, 90 + 20 * len(matrix["units"])),
        margin=dict(l=10, r=10, t=60, b=10),
    )
    return fig


def soup_lineage_graph(graph: Mapping) -> go.Figure:
    """Ingredients -> soup as a graph: one node per ingredient on the left, the soup on the
    right, an edge from each ingredient (green: kept by a greedy soup, red dotted: left out,
    grey: every ingredient is kept or the soup is not built yet).

    ``graph``: `dashboard.soup_view.lineage_graph` (``nodes``, ``edges``).
    """
    at = {n["id"]: (n["x"], n["y"]) for n in graph["nodes"]}
    fig = go.Figure()
    for kept, color, dash, name in (
        (True, ACCEPTED_COLOR, "solid", "kept"),
        (False, REJECTED_COLOR, "dot", "left out"),
        (None, "#7f7f7f", "solid", "ingredient of"),
    ):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for e in graph["edges"]:
            if e["kept"] is kept:
                (x0, y0), (x1, y1) = at[e["source"]], at[e["target"]]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=name,
                    line=dict(color=color, dash=dash, width=2),
                    hoverinfo="skip",
                )
            )
    for kind, color, symbol, position in (
        ("ingredient", "#1f77b4", "circle", "middle left"),
        ("soup", "#ff7f0e", "hexagon", "middle right"),
    ):
        nodes = [n for n in graph["nodes"] if n["kind"] == kind]
        fig.add_trace(
            go.Scatter(
                x=[n["x"] for n in nodes],
                y=[n["y"] for n in nodes],
                mode="markers+text",
                name=f"{kind}s" if kind == "ingredient" else kind,
                text=[n["label"] for n in nodes],
                textposition=position,
                hovertext=[n["hover"] for n in nodes],
                hovertemplate="%{hovertext}<extra></extra>",
                marker=dict(color=color, symbol=symbol, size=18 if kind == "soup" else 12),
            )
        )
    rows = sum(1 for n in graph["nodes"] if n["kind"] == "ingredient")
    fig.update_xaxes(visible=False, range=[-1.2, 2.2])
    fig.update_yaxes(visible=False, range=[-0.8, max(rows - 1, 0) + 0.8])
    fig.update_layout(
        title_text="Lineage: ingredients → soup",
        height=max(240, 80 + 40 * rows),
        showlegend=False,
        margin=dict(l=10, r=10, t=50, b=10),
    )
    return fig


def configurations_parcoords(configs: Sequence[Mapping], axes: Sequence) -> go.Figure:
    """Parallel coordinates of configurations (`dashboard.shaping.configurations`), one line
    each, coloured by test accuracy; ``axes``: `dashboard.shaping.Axis` (a log axis is drawn in
    log10 with the values as ticks, a categorical one with its labels)."""
    dimensions = []
    for axis in axes:
        values = [axis.value(c) for c in configs]
        dim: dict = dict(label=axis.label, values=values)
        if axis.ticks:
            dim |= dict(tickvals=list(range(len(axis.ticks))), ticktext=list(axis.ticks))
            dim["range"] = [-0.5, len(axis.ticks) - 0.5]
        elif axis.log:
            raw = sorted({float(c[axis.key]) for c in configs if axis.value(c) is not None})
            dim |= dict(tickvals=[math.log10(v) for v in raw], ticktext=[f"{v:g}" for v in raw])
        known = [v for v in values if v is not None]
        if known and min(known) == max(known) and not axis.ticks:
            dim["range"] = [min(known) - 0.5, max(known) + 0.5]  # a constant axis, centred
        dimensions.append(dim)
    test = [c.get("test_acc") for c in configs]
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions,
            line=dict(
                color=[0.0 if v is None else v for v in test],
                colorscale=ANGLE_SCALE,
                showscale=True,
                colorbar=dict(title=dict(text="test acc")),
            ),
        )
    )
    fig.update_layout(
        title_text=f"Configurations ({len(configs)}): drag along an axis to filter the tables",
        height=460,
        margin=dict(l=80, r=60, t=90, b=30),
    )
    return fig

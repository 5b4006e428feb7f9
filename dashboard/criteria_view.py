"""Selection criteria on the Angles page (pure): rank jobs and their scores, drawn with the
angle charts of `dashboard.charts`, and the comparison of criteria (`contract.api.
CriteriaComparison`) as a Spearman matrix and tables.

A rank job's ``config`` is its spec (`pft.jobs.specs.RankSpec.to_dict()`: model, dataset,
criterion, params, seed, ...), its ``result`` a `contract.api.RankScores`. Criteria come from
``GET /catalog/criteria`` (`contract.api.CriterionEntry`); one that ``needs_reference`` scores
units by a finished fine-tuning job's angles, so the page shows those jobs' angles for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from pydantic import ValidationError

from contract.api import CriteriaComparison, CriterionEntry, JobPublic, RankScores
from contract.vocab import JobKind, JobStatus
from dashboard import charts
from dashboard.layout import Grid
from dashboard.progress import EMPTY, status_text

CORRELATION_SCALE = "RdBu"  # rho -1 (red) .. +1 (blue)


def job_criteria(entries: Iterable[CriterionEntry]) -> list[CriterionEntry]:
    """The criteria a rank job runs (the others rank from a finished fine-tuning job)."""
    return [c for c in entries if not c.needs_reference]


def criterion_of(job: JobPublic) -> str | None:
    return job.config.get("criterion") if job.kind == JobKind.RANK else None


def rank_jobs(jobs: Iterable[JobPublic], criterion: str) -> list[JobPublic]:
    """The rank jobs of ``criterion``, in the order given (the API's: newest first)."""
    return [j for j in jobs if criterion_of(j) == criterion]


def scores_of(job: JobPublic) -> RankScores | None:
    """A succeeded rank job's scores; None for any other job (or a result of another shape)."""
    if job.kind != JobKind.RANK or job.status != JobStatus.SUCCEEDED or not job.result:
        return None
    try:
        return RankScores.model_validate(job.result)
    except ValidationError:
        return None


def rank_label(job: JobPublic) -> str:
    """``#12 fisher (batches=8, batch_size=32) · seed 0 · model / dataset · succeeded``."""
    params = job.config.get("params") or {}
    given = ", ".join(f"{k}={v}" for k, v in params.items())
    what = f"{criterion_of(job)}" + (f" ({given})" if given else "")
    parts = [f"#{job.id}", what, f"seed {job.seed}", f"{job.model} / {job.dataset}"]
    return " · ".join([*parts, status_text(job)])


def values(scores: RankScores) -> dict[str, float]:
    """unit name -> score."""
    return {u.name: u.score for u in scores.units}


def groups(scores: RankScores) -> dict[str, list[str]]:
    """group -> its units in depth order, as the scores list them."""
    out: dict[str, list[str]] = {}
    for u in scores.units:
        out.setdefault(u.group, []).append(u.name)
    return out


def rank_body(
    model: str, dataset: str, criterion: str, params: Mapping[str, Any], seed: int
) -> dict[str, Any]:
    """The ``POST /jobs`` body of a rank job (the criterion's parameters at the top level)."""
    return {
        "kind": JobKind.RANK.value,
        "model": model,
        "dataset": dataset,
        "criterion": criterion,
        "seed": int(seed),
        **params,
    }


def _relabel(fig: go.Figure, criterion: str) -> go.Figure:
    """An angle chart made to show scores: no degree signs, the criterion named."""
    fig.update_traces(selector=dict(type="heatmap"), colorbar=dict(title=dict(text="score")))
    fig.update_traces(
        selector=dict(type="heatmap"),
        hovertemplate="%{y} %{x}: %{z:.4g}<extra>" + criterion + "</extra>",
    )
    fig.update_traces(selector=dict(type="bar"), hovertemplate="%{y}: %{x:.4g}<extra></extra>")
    return fig


def score_heatmap(scores: RankScores, grid: Grid, title: str) -> go.Figure:
    """Per-unit scores on the blocks x kinds grid (`charts.unit_angle_heatmap`)."""
    fig = charts.unit_angle_heatmap(values(scores), grid, title=title)
    heat = fig.data[0]
    heat.text = [["" if v is None else f"{v:.3g}" for v in row] for row in heat.z]
    return _relabel(fig, scores.criterion)


def ranked_score_bars(
    scores: RankScores, by_group: Mapping[str, Sequence[str]], selected: Sequence[str] = ()
) -> go.Figure:
    """Units ranked by score per group, largest on top (`charts.ranked_angle_bars`)."""
    fig = charts.ranked_angle_bars(values(scores), by_group, selected)
    fig.update_xaxes(title_text=f"{scores.criterion} score")
    fig.update_layout(title_text=f"Units ranked by {scores.criterion} per group")
    return _relabel(fig, scores.criterion)


# --- the comparison ------------------------------------------------------------------------


def correlation_matrix(comparison: CriteriaComparison) -> tuple[list[str], list[list]]:
    """The criteria compared and their Spearman matrix (1 on the diagonal; None where a pair's
    correlation is undefined)."""
    names = [c.criterion for c in comparison.criteria]
    index = {n: i for i, n in enumerate(names)}
    z: list[list[float | None]] = [
        [1.0 if i == j else None for j in range(len(names))] for i in range(len(names))
    ]
    for p in comparison.pairs:
        i, j = index[p.a], index[p.b]
        z[i][j] = z[j][i] = p.spearman
    return names, z


def correlation_heatmap(comparison: CriteriaComparison) -> go.Figure:
    """Spearman's rho between every pair of criteria, on a fixed -1..1 diverging scale."""
    names, z = correlation_matrix(comparison)
    text = [["" if v is None else f"{v:.2f}" for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            zmin=-1,
            zmax=1,
            zmid=0,
            colorscale=CORRELATION_SCALE,
            text=text,
            texttemplate="%{text}",
            xgap=2,
            ygap=2,
            colorbar=dict(title=dict(text="rho")),
            hovertemplate="%{y} vs %{x}: rho %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title_text=f"Rank correlation (Spearman) on {comparison.model} / {comparison.dataset}",
        height=max(300, 120 + 60 * len(names)),
    )
    return fig


def overlap_rows(comparison: CriteriaComparison) -> list[dict[str, Any]]:
    """One row per pair: Spearman's rho and the top-K overlap."""
    return [
        {
            "criterion A": p.a,
            "criterion B": p.b,
            # text: a pair without a correlation (one side ranks nothing) shows EMPTY
            "spearman": EMPTY if p.spearman is None else f"{p.spearman:.4f}",
            f"top-{comparison.k} overlap": round(p.topk_overlap, 4),
        }
        for p in comparison.pairs
    ]


def cost_rows(comparison: CriteriaComparison) -> list[dict[str, Any]]:
    """One row per criterion: the job its scores come from and what they cost."""
    return [
        {
            "criterion": c.criterion,
            "job": f"#{c.job_id}",
            "units": len(c.units),
            "seconds": round(comparison.cost.get(c.criterion, c.seconds), 3),
        }
        for c in comparison.criteria
    ]


def scored_runs(jobs: Iterable[JobPublic]) -> list[tuple[str, str]]:
    """The (model, dataset) pairs some succeeded rank job scored, newest first."""
    out: dict[tuple[str, str], None] = {}
    for j in jobs:
        if j.kind == JobKind.RANK and j.status == JobStatus.SUCCEEDED and j.model and j.dataset:
            out.setdefault((j.model, j.dataset), None)
    return list(out)

"""Angles: per-unit scores of the selection criteria, and how the criteria agree.

Per unit: choose the criterion shown. The fine-tuned angle (the criterion that ranks from a
finished full fine-tuning run) shows a job's per-unit and per-tensor angle heatmaps, a second
job side by side or as a difference, the trajectory over epochs, ranked bars per group, and a
selection by angle (a strategy of the catalogue that takes a reference job) previewed and
launched in one click. Any other criterion shows the scores of its rank jobs with the same
heatmap and ranked bars, and starts a rank job (``POST /jobs``, kind ``rank``) whose progress
follows live. Criteria: for one model and dataset, Spearman's rank correlation between every
pair of criteria, their top-K overlap and each one's cost (``GET /criteria/compare``).
"""

from __future__ import annotations

import streamlit as st

from contract.api import CriterionEntry, JobPublic, UnitMapPublic
from contract.vocab import JobKind, JobStatus
from dashboard import charts, criteria_view, data
from dashboard.client import ApiError, get_client
from dashboard.config import get_settings
from dashboard.layout import groups_of, tensor_grid, unit_grid
from dashboard.params import param_widgets, takes_a_job
from dashboard.shaping import degrees, trajectory
from dashboard.ui import (
    backend_errors,
    flash,
    init_state,
    job_label,
    reference_order,
    show_flash,
    table,
)

SPEC_KEYS = ("model_overrides", "pretrained", "shifts")  # carried over to a launched job

init_state()
settings = get_settings()
st.title("Fine-tuned angles and selection criteria")
show_flash()

with backend_errors("loading the selection criteria"):
    criteria = {c.name: c for c in data.criteria()}


def _unit_map(job: JobPublic) -> UnitMapPublic | None:
    """The job's unit map; None when the API has none (the grids then place the angle rows
    by their own block and group)."""
    try:
        catalog = {d.name: d.num_classes for d in data.datasets().datasets}
        num_classes = catalog.get(job.dataset or "") or (job.result or {}).get("num_classes")
        return data.units(job.model or "", int(num_classes)).unit_map if num_classes else None
    except ApiError:
        return None


def angle_view() -> None:
    """The fine-tuned angles of finished fine-tuning jobs."""
    with backend_errors("loading finished jobs"):
        # Jobs that tuned every parameter first: their angles are the ones a ranking by angle uses.
        finished = reference_order(data.all_jobs(kind=JobKind.FINETUNE, status=JobStatus.SUCCEEDED))
    if not finished:
        st.info(
            "No finished fine-tuning job yet: launch one on the **New experiment** page to see "
            "its angles here (a job that tunes every parameter moves every unit)."
        )
        return

    by_id = {j.id: j for j in finished}
    job_id = st.selectbox(
        "Job", list(by_id), key="angles-job", format_func=lambda i: job_label(by_id[i])
    )
    job = by_id[job_id]
    with backend_errors(f"loading the angles of job {job_id}"):
        recorded = data.angles(job_id)
    final, history = recorded.final, trajectory(recorded)
    if final is None or not final.units:
        st.info(f"Job {job_id} has no recorded angles (jobs record them when they finish).")
        return

    unit_map = _unit_map(job)
    grid = unit_grid(unit_map, final.units)
    units = degrees(final.units)

    others = [i for i in by_id if i != job_id]
    c1, c2 = st.columns([2, 1])
    compare_id = c1.selectbox(
        "Compare with",
        [None, *others],
        key="angles-compare-job",
        format_func=lambda i: "no second job" if i is None else job_label(by_id[i]),
    )
    mode = c2.radio(
        "Show",
        ["side by side", "difference"],
        key="angles-compare-mode",
        horizontal=True,
        disabled=compare_id is None,
    )

    other = None
    if compare_id is not None:
        with backend_errors(f"loading the angles of job {compare_id}"):
            other_final = data.angles(compare_id).final
        other = degrees(other_final.units) if other_final else {}
    side_by_side = other is not None and mode == "side by side"
    main_col, other_col = st.columns(2) if side_by_side else (st.container(), None)
    main_col.plotly_chart(
        charts.unit_angle_heatmap(units, grid, title=f"Angle per unit, job {job_id}"),
        key="angles-unit-heatmap",
        width="stretch",
    )
    if other is not None:
        if side_by_side:
            fig = charts.unit_angle_heatmap(other, grid, title=f"Angle per unit, job {compare_id}")
        else:
            fig = charts.angle_difference_heatmap(
                units, other, grid, (f"job {job_id}", f"job {compare_id}")
            )
        (other_col or st).plotly_chart(fig, key="angles-compare-heatmap", width="stretch")

    if final.tensors:
        st.plotly_chart(
            charts.tensor_angle_heatmap(
                final.tensors,
                tensor_grid(final.tensors, unit_map),
                title=f"Angle per tensor, job {job_id}",
            ),
            key="angles-tensor-heatmap",
            width="stretch",
        )
    if len(history) > 1:
        st.plotly_chart(
            charts.angle_trajectory(history, grid), key="angles-trajectory", width="stretch"
        )
    elif history:
        st.caption("The trajectory needs at least two epochs of angles.")

    # Strategies that take a reference job select units by its angles: preview one on this job.
    with backend_errors("loading the strategies"):
        by_angle = {s.name: s for s in data.strategies() if takes_a_job(s)}
    selected: list[str] = []
    if by_angle:
        st.subheader("Select units by these angles")
        name = st.selectbox(
            "Strategy",
            list(by_angle),
            key="angles-strategy",
            format_func=lambda n: f"{n} — {by_angle[n].description}",
        )
        entry = by_angle[name]
        reference = takes_a_job(entry).name
        filled = param_widgets(entry, prefix="angles", units=list(units), fixed={reference: job_id})
        params = filled.values
        strategy = {"name": name, **params}
        spec = job.config  # the reference job's fine-tuning spec
        body = {
            "model": job.model,
            "dataset": job.dataset,
            "model_overrides": spec["model_overrides"],
            "strategy": strategy,
        }
        selection, refused = None, None
        if filled.ok:  # else its widgets show what to fix
            try:
                selection = data.preview(body)
                selected = selection.units
            except ApiError as exc:
                refused = exc.message
        groups = groups_of(unit_map, final.units)
        st.plotly_chart(
            charts.ranked_angle_bars(units, groups, selected), key="angles-ranked", width="stretch"
        )
        if selection:
            st.plotly_chart(
                charts.unit_selection_grid(grid, [selection]),
                key="angles-topk-grid",
                width="stretch",
            )
        elif refused:
            st.warning(f"{name} cannot use job {job_id}: {refused}")
        given = ", ".join(f"{k}={v}" for k, v in params.items() if k != reference)
        with backend_errors("loading the hyperparameters"):
            settable = {p.name for p in data.hparams().params}
        if st.button(
            f"Launch {name} ({given}) from job {job_id}",
            type="primary",
            key="launch-topk",
            disabled=selection is None,
        ):
            launch = {
                "kind": JobKind.FINETUNE.value,
                "model": job.model,
                "dataset": job.dataset,
                "strategy": strategy,
                # The reference's hyperparameters that a request may set (`/catalog/hparams`).
                "hparams": {k: v for k, v in spec["hparams"].items() if k in settable},
                **{k: spec[k] for k in SPEC_KEYS},
            }
            with backend_errors("the backend refused the job"):
                created = get_client().create_job(launch)
            data.clear()
            flash(
                f"Job {created.id} ({created.status}) launched: {name} {given} from job "
                f"{job_id}. Follow it on the Jobs page."
            )
            st.rerun()


# --- the other criteria: rank jobs ------------------------------------------------------------


def rank_progress(criterion: str, polling: bool) -> None:
    """Queued and running rank jobs of ``criterion``, refreshed live while there are any."""
    with backend_errors("loading rank jobs"):
        jobs = criteria_view.rank_jobs(data.all_jobs(kind=JobKind.RANK), criterion)
    active = [j for j in jobs if not j.status.terminal]
    if polling and not active:
        st.rerun()  # the last one finished: redraw the page once, which stops the polling
    for j in active:
        st.progress(j.progress, text=f"{criteria_view.rank_label(j)} · {100 * j.progress:.0f}%")


def launch_rank(entry: CriterionEntry, expanded: bool) -> None:
    """Model, dataset, seed and the criterion's parameters; starts one rank job."""
    with st.expander(f"Score every unit by {entry.name}: start a rank job", expanded=expanded):
        st.caption(f"{entry.description}. Cost: {entry.cost}.")
        with backend_errors("loading the catalogues"):
            models, datasets = data.models(), data.datasets()
        described = {d.name: d.description for d in datasets.datasets if d.num_classes}
        c1, c2, c3 = st.columns([2, 2, 1])
        model = c1.selectbox("Model", [m.name for m in models], key="rank-model")
        dataset = c2.selectbox(
            "Dataset",
            list(described),
            key="rank-dataset",
            format_func=lambda n: f"{n} — {described[n]}".rstrip(" —"),
        )
        seed = c3.number_input("Seed", min_value=0, value=0, step=1, key="rank-seed")
        filled = param_widgets(entry, prefix=f"rank-{entry.name}", columns=3)
        if st.button(
            f"Start a {entry.name} rank job",
            type="primary",
            key="launch-rank",
            disabled=not filled.ok or not model,
        ):
            body = criteria_view.rank_body(model, dataset, entry.name, filled.values, int(seed))
            with backend_errors("the backend refused the rank job"):
                created = get_client().create_job(body)
            data.clear()
            flash(
                f"Rank job {created.id} ({created.status}) started: {entry.name} on {model} / "
                f"{dataset}. Its progress shows here."
            )
            st.rerun()


def scores_view(entry: CriterionEntry) -> None:
    """The scores of the rank jobs of ``entry``, a form to start one, live progress."""
    with backend_errors("loading rank jobs"):
        jobs = criteria_view.rank_jobs(data.all_jobs(kind=JobKind.RANK), entry.name)
    done = [j for j in jobs if j.status == JobStatus.SUCCEEDED]
    polling = any(not j.status.terminal for j in jobs)
    launch_rank(entry, expanded=not done)
    st.fragment(run_every=settings.dashboard_refresh_s if polling else None)(rank_progress)(
        entry.name, polling
    )
    if not done:
        st.info(
            f"No finished {entry.name} rank job yet: start one above. It scores every unit "
            "of a model on a dataset without a fine-tuning run."
        )
        return
    by_id = {j.id: j for j in done}
    job_id = st.selectbox(
        "Rank job",
        list(by_id),
        key="angles-rank-job",
        format_func=lambda i: criteria_view.rank_label(by_id[i]),
    )
    job = by_id[job_id]
    scores = criteria_view.scores_of(job)
    if scores is None:
        st.warning(f"Job {job_id} recorded no per-unit scores.")
        return
    unit_map = _unit_map(job)
    if unit_map is not None:
        st.plotly_chart(
            criteria_view.score_heatmap(
                scores, unit_grid(unit_map), title=f"{entry.name} per unit, job {job_id}"
            ),
            key="angles-score-heatmap",
            width="stretch",
        )
    else:
        st.caption(f"No unit map of {job.model} yet: the scores are shown ranked only.")
    st.plotly_chart(
        criteria_view.ranked_score_bars(scores, criteria_view.groups(scores)),
        key="angles-score-ranked",
        width="stretch",
    )
    st.caption(f"Scored in {scores.seconds:.2f} s on {scores.device or 'an unrecorded device'}.")


# --- the criteria tab --------------------------------------------------------------------------


def criteria_tab() -> None:
    """Spearman's rho, the top-K overlaps and the cost of every criterion scored on one model
    and dataset."""
    with backend_errors("loading rank jobs"):
        runs = criteria_view.scored_runs(
            data.all_jobs(kind=JobKind.RANK, status=JobStatus.SUCCEEDED)
        )
    if not runs:
        st.info(
            "No finished rank job yet: choose a criterion other than the fine-tuned angle on the "
            "**Per unit** tab and start one. Criteria scored on the same model and dataset are "
            "compared here, with the angles of a full fine-tuning job of that model and dataset."
        )
        return
    labels = {f"{m} / {d}": (m, d) for m, d in runs}
    c1, c2, c3 = st.columns([2, 1, 1])
    model, dataset = labels[c1.selectbox("Model and dataset", list(labels), key="criteria-run")]
    k = c2.number_input(
        "k: units per group (empty: half the smallest group)",
        min_value=1,
        value=None,
        step=1,
        key="criteria-k",
    )
    with backend_errors("loading the strategies"):
        orders = next(
            (p.choices for s in data.strategies() for p in s.params if p.name == "order"), []
        )
    order = c3.radio("Order", orders, key="criteria-order", horizontal=True) if orders else None
    with backend_errors(f"comparing the criteria on {model} / {dataset}"):
        comparison = data.criteria_comparison(
            model, dataset, int(k) if k is not None else None, order
        )
    names = [c.criterion for c in comparison.criteria]
    if len(names) < 2:
        st.info(
            f"Only {', '.join(names) or 'no criterion'} scored on {model} / {dataset}: score "
            "another criterion there (a rank job, or a full fine-tuning job for the angles) to "
            "compare them."
        )
    else:
        st.plotly_chart(
            criteria_view.correlation_heatmap(comparison),
            key="criteria-spearman",
            width="stretch",
        )
        st.caption(
            f"Top-{comparison.k} overlap: the share of the {comparison.k} units per group with the "
            f"{comparison.order} scores that both criteria select."
        )
        table(criteria_view.overlap_rows(comparison), key="criteria-overlap")
    table(criteria_view.cost_rows(comparison), key="criteria-cost")


units_tab, compare_tab = st.tabs(["Per unit", "Criteria"])
with units_tab:
    names = list(criteria)
    by_reference = [n for n in names if criteria[n].needs_reference]
    shown = st.selectbox(
        "Criterion",
        names,
        index=names.index(by_reference[0]) if by_reference else 0,
        key="angles-criterion",
        format_func=lambda n: f"{n} — {criteria[n].description}",
    )
    if criteria[shown].needs_reference:
        angle_view()
    else:
        scores_view(criteria[shown])
with compare_tab:
    criteria_tab()

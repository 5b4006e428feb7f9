"""Angles: per-unit and per-tensor fine-tuned angle heatmaps of a job, a second job side by side
or as a difference, the trajectory over epochs, ranked bars per group, and a selection by angle
(a strategy of the catalogue that takes a reference job) previewed and launched in one click."""

from __future__ import annotations

import streamlit as st

from contract.api import JobPublic, UnitMapPublic
from contract.vocab import JobKind, JobStatus
from dashboard import charts, data
from dashboard.client import ApiError, get_client
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
)

SPEC_KEYS = ("model_overrides", "pretrained", "shifts")  # carried over to a launched job

init_state()
st.title("Fine-tuned angles")
show_flash()

with backend_errors("loading finished jobs"):
    # Jobs that tuned every parameter first: their angles are the ones a ranking by angle uses.
    finished = reference_order(data.all_jobs(kind=JobKind.FINETUNE, status=JobStatus.SUCCEEDED))
if not finished:
    st.info(
        "No finished fine-tuning job yet: launch one on the **New experiment** page to see "
        "its angles here (a job that tunes every parameter moves every unit)."
    )
    st.stop()

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
    st.stop()


def _unit_map(job: JobPublic) -> UnitMapPublic | None:
    """The job's unit map; None when the API has none (the grids then place the angle rows
    by their own block and group)."""
    try:
        catalog = {d.name: d.num_classes for d in data.datasets().datasets}
        num_classes = catalog.get(job.dataset or "") or (job.result or {}).get("num_classes")
        return data.units(job.model or "", int(num_classes)).unit_map if num_classes else None
    except ApiError:
        return None


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

"""Angles: per-unit and per-tensor fine-tuned angle heatmaps of a job, a second job side by side
or as a difference, the trajectory over epochs, ranked bars per group, and top-K selection
launched as an ``angle_topk`` job in one click."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data
from dashboard.client import ApiError, get_client
from dashboard.selection import preview
from dashboard.shaping import normalize_angles
from dashboard.ui import backend_errors, flash, init_state, job_label, show_flash, unit_map_of

init_state()
st.title("Fine-tuned angles")
show_flash()

with backend_errors("loading finished jobs"):
    finished = data.all_jobs(kind="finetune", status="succeeded")
# Full fine-tuning runs first: their angles are the ones FAPFT ranks.
finished.sort(key=lambda j: (j.get("strategy") != "full", -j["id"]))
if not finished:
    st.info(
        "No finished fine-tuning job yet: launch one (strategy `full`) on the **New "
        "experiment** page to see its angles here."
    )
    st.stop()

by_id = {j["id"]: j for j in finished}
job_id = st.selectbox(
    "Job", list(by_id), key="angles-job", format_func=lambda i: job_label(by_id[i])
)
job = by_id[job_id]
with backend_errors(f"loading the angles of job {job_id}"):
    angles = normalize_angles(data.angles(job_id))
if angles.empty:
    st.info(f"Job {job_id} has no recorded angles (jobs record them when they finish).")
    st.stop()

unit_map = None
try:
    catalog = {d["name"]: d for d in data.datasets().get("datasets", [])}
    num_classes = (catalog.get(job["dataset"]) or {}).get("num_classes") or 10
    unit_map = unit_map_of(data.units(job["model"], int(num_classes)))
except (ApiError, KeyError, TypeError):
    unit_map = None  # the heatmaps infer the grid from the unit names

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
        other = normalize_angles(data.angles(compare_id))
side_by_side = other is not None and mode == "side by side"
main_col, other_col = st.columns(2) if side_by_side else (st.container(), None)
main_col.plotly_chart(
    charts.unit_angle_heatmap(angles.units, unit_map, title=f"Angle per unit, job {job_id}"),
    key="angles-unit-heatmap",
    width="stretch",
)
if other is not None:
    if side_by_side:
        fig = charts.unit_angle_heatmap(
            other.units, unit_map, title=f"Angle per unit, job {compare_id}"
        )
    else:
        fig = charts.angle_difference_heatmap(
            angles.units, other.units, (f"job {job_id}", f"job {compare_id}"), unit_map
        )
    (other_col or st).plotly_chart(fig, key="angles-compare-heatmap", width="stretch")

if angles.tensors:
    st.plotly_chart(
        charts.tensor_angle_heatmap(
            angles.tensors, unit_map, title=f"Angle per tensor, job {job_id}"
        ),
        key="angles-tensor-heatmap",
        width="stretch",
    )
if len(angles.epochs) > 1:
    st.plotly_chart(
        charts.angle_trajectory(angles.epochs, unit_map),
        key="angles-trajectory",
        width="stretch",
    )
elif angles.epochs:
    st.caption("The trajectory needs at least two epochs of angles.")

st.subheader("Select the top-K units per group")
k1, k2 = st.columns(2)
groups = (unit_map or {}).get("groups") or {}
smallest = min((len(v) for v in groups.values()), default=max(1, len(angles.units) // 2))
k = int(
    k1.number_input(
        "K (units per group)",
        min_value=1,
        max_value=max(1, smallest),
        value=min(max(1, smallest // 2), smallest),
        step=1,
        key="angles-k",
    )
)
order = k2.radio(
    "Order",
    ["largest", "smallest"],
    key="angles-order",
    horizontal=True,
    help="largest angles for hard tasks, smallest for easy ones (Ye et al. 2023)",
)

selected: list[str] = []
selection = None
if unit_map:
    try:
        selection = preview(
            unit_map, "angle_topk", {"k": k, "order": order, "angles": angles.units}
        )
        selected = selection["units"]
    except ValueError as exc:
        st.warning(str(exc))
st.plotly_chart(
    charts.ranked_angle_bars(angles.units, unit_map, selected),
    key="angles-ranked",
    width="stretch",
)
if selection:
    st.plotly_chart(
        charts.unit_selection_grid(unit_map, [selection]),
        key="angles-topk-grid",
        width="stretch",
    )

if st.button(
    f"Launch angle_topk (K={k}, {order}) from job {job_id}",
    type="primary",
    key="launch-topk",
    disabled=job.get("strategy") != "full",
    help=None
    if job.get("strategy") == "full"
    else "angle_topk needs a full fine-tuning job as reference",
):
    config = job.get("config") or {}
    body = {
        "kind": "finetune",
        "model": job["model"],
        "dataset": job["dataset"],
        "strategy": {"name": "angle_topk", "k": k, "order": order, "reference_job": job_id},
        "hparams": config.get("hparams") or {},
    }
    for key in ("model_overrides", "pretrained", "shifts"):
        if key in config:
            body[key] = config[key]
    with backend_errors("the backend refused the job"):
        created = get_client().create_job(body)
    data.clear()
    flash(
        f"Job {created.get('id')} ({created.get('status')}) launched: angle_topk K={k} "
        f"{order} from job {job_id}. Follow it on the Jobs page."
    )
    st.rerun()
if job.get("strategy") != "full":
    st.caption("Pick a full fine-tuning job to launch angle_topk from it.")

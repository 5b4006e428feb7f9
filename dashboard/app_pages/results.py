"""Results. One experiment: its configurations in parallel coordinates (brushing filters the
tables), mean ± spread per strategy, accuracy vs tuned parameters with the Pareto front, test
and held-out curves, CSV/JSON download. Any set of jobs: several experiments, loose fine-tuning
jobs (of no experiment) and soups side by side, grouped by recipe, with held-out, test and
shift accuracy as mean, sd and 95% t-interval over seeds (``GET /results``)."""

from __future__ import annotations

import json

import streamlit as st

from contract.vocab import JobKind, JobStatus
from dashboard import charts, data
from dashboard.client import ApiError
from dashboard.components.parcoords import parcoords_brush
from dashboard.shaping import (
    LOWEST_BLOCK,
    brushed,
    configurations,
    job_points,
    metrics_table,
    parcoords_axes,
    result_job_rows,
    result_points,
    results_table,
    summary_points,
)
from dashboard.ui import backend_errors, init_state, table

ONE, ANY = "one experiment", "any set of jobs"
NOTHING_YET = (
    "No experiment yet: launch one on the **New experiment** page; its results appear "
    "here as its jobs finish."
)


def any_set_of_jobs(experiments: list) -> None:
    """Several experiments, the loose fine-tuning jobs and the soups, side by side."""
    names = {e.id: f"#{e.id} {e.name} ({e.model} / {e.dataset})" for e in experiments}
    last = st.session_state.get("last_experiment")
    chosen = st.multiselect(
        "Experiments",
        list(names),
        default=[last] if last in names else list(names)[:1],
        key="results-any-experiments",
        format_func=names.get,
    )
    c1, c2 = st.columns(2)
    loose = c1.checkbox(
        "Loose fine-tuning jobs (of no experiment, e.g. launched on the Angles page)",
        value=True,
        key="results-any-loose",
    )
    soups = c2.checkbox("Soups", value=True, key="results-any-soups")
    if not (chosen or loose or soups):
        st.info("Pick experiments, loose jobs or soups to compare.")
        return
    with backend_errors("loading the results"):
        view = data.results(tuple(chosen), loose, soups)
    if not view.jobs:
        st.info(
            NOTHING_YET
            if not experiments
            else "Nothing to show: the selection holds no job yet (loose fine-tuning jobs and "
            "soups appear here once they are launched)."
        )
        return
    finished = sum(j.status == JobStatus.SUCCEEDED for j in view.jobs)
    st.caption(
        f"{len(view.groups)} group(s) of {len(view.jobs)} job(s), {finished} finished · a group "
        "is one recipe over seeds: mean, sample sd and the 95% t-interval (±) over its n "
        "finished jobs"
    )
    if view.truncated:
        st.warning(f"Only the newest {len(view.jobs)} jobs are shown: select fewer.")
    number = st.column_config.NumberColumn
    shift_columns = {
        c: number(c, format="%.4f")
        for shift in view.shifts
        for c in (f"{shift} acc", f"{shift} ±95%")
    }
    table(
        results_table(view, names),
        key="results-any-table",
        column_config={
            "group": st.column_config.TextColumn("group", width="large"),
            **{
                c: number(c, format="%.4f")
                for c in ("test acc", "test sd", "test ±95%", "held-out acc", "held-out sd")
            },
            "held-out ±95%": number("held-out ±95%", format="%.4f"),
            **shift_columns,
            "tuned params": number("tuned params", format="localized"),
        },
    )
    points = result_points(view)
    if points:
        fig = charts.accuracy_vs_params(points)
        st.plotly_chart(fig, key="results-any-scatter", width="stretch")
        st.caption("Error bars: the 95% t-interval of the mean test accuracy over seeds.")
    with st.expander(f"The {len(view.jobs)} job(s)"):
        table(
            result_job_rows(view),
            key="results-any-jobs",
            column_config={
                "group": st.column_config.TextColumn("group", width="large"),
                **{c: number(c, format="%.4f") for c in ("held-out acc", "test acc")},
                **{c: number(c, format="%.4f") for c in shift_columns if c.endswith(" acc")},
            },
        )
    st.download_button(
        "results.json",
        view.model_dump_json(indent=2),
        file_name="results.json",
        mime="application/json",
        key="download-any-json",
    )


init_state()
st.title("Results")

with backend_errors("loading experiments"):
    experiments = data.experiments()
shown = st.radio(
    "Show", (ONE, ANY), index=0 if experiments else 1, horizontal=True, key="results-view"
)
if shown == ANY:
    any_set_of_jobs(experiments)
    st.stop()
if not experiments:
    st.info(NOTHING_YET)
    st.stop()

names = {e.id: f"#{e.id} {e.name} ({e.model} / {e.dataset})" for e in experiments}
default = st.session_state.get("last_experiment")
ids = list(names)
experiment_id = st.selectbox(
    "Experiment",
    ids,
    key="results-experiment",
    index=ids.index(default) if default in ids else 0,
    format_func=names.get,
)
with backend_errors(f"loading experiment {experiment_id}"):
    experiment = data.experiment(experiment_id)
    jobs = data.all_jobs(experiment_id=experiment_id)

summary = experiment.summary
done = sum(j.status == JobStatus.SUCCEEDED for j in jobs)
st.caption(
    f"{experiment.model} on {experiment.dataset} · {len(jobs)} job(s), "
    f"{done} finished · hyperparameters {experiment.hparams}"
)

# Parallel coordinates of the experiment's configurations; brushing an axis filters the
# tables below to the configurations inside every brush.
with backend_errors(f"loading the results of experiment {experiment_id}"):
    exported = json.loads(data.results_file(experiment_id, "json"))["jobs"]
finished_jobs = [j for j in jobs if j.status == JobStatus.SUCCEEDED and j.result]
unit_map = None
if finished_jobs:
    try:  # the unit map names each tuned unit's group and block
        num_classes = int(finished_jobs[0].result.get("num_classes") or 0)
        unit_map = data.units(experiment.model, num_classes).unit_map if num_classes else None
    except ApiError as exc:
        st.caption(f"Units per group are not shown: {exc.message}")
configs = configurations(job_points(jobs, exported, unit_map))
shown_labels = None
if configs:
    st.subheader("Configurations")
    axes = parcoords_axes(configs)
    with st.container(key="results-parcoords"):
        ranges = parcoords_brush(
            charts.configurations_parcoords(configs, axes),
            key=f"results-parcoords-{experiment_id}",
        )
    inside = brushed(configs, axes, ranges)
    if ranges:
        shown_labels = {c["label"] for c in inside}
        brushes = ", ".join(
            f"{label} in " + " or ".join(f"[{lo:.4g}, {hi:.4g}]" for lo, hi in spans)
            for label, spans in ranges.items()
        )
        st.caption(
            f"Brushed: {len(inside)} of {len(configs)} configuration(s) "
            f"({sum(c['n'] for c in inside)} job(s)) with {brushes}; drag an axis' brush off "
            "to clear it."
        )
    else:
        st.caption(
            f"{len(configs)} configuration(s) of {sum(c['n'] for c in configs)} finished "
            "job(s) (seeds averaged); drag along an axis to filter the tables."
        )

if summary:
    st.subheader("Per strategy (mean ± spread over seeds)")
    columns = {
        "label",
        "jobs",
        "succeeded",
        "test_acc_mean",
        "test_acc_std",
        "heldout_acc_mean",
        "tuned_params",
        "tuned_fraction",
    }
    table(
        [
            row.model_dump(include=columns)
            for row in summary
            if shown_labels is None or row.label in shown_labels
        ],
        key="results-table",
        column_config={
            "label": "strategy",
            "test_acc_mean": st.column_config.NumberColumn("test acc (mean)", format="%.4f"),
            "test_acc_std": st.column_config.NumberColumn("± std over seeds", format="%.4f"),
            "heldout_acc_mean": st.column_config.NumberColumn("held-out acc", format="%.4f"),
            "tuned_params": st.column_config.NumberColumn("tuned params", format="localized"),
            "tuned_fraction": st.column_config.NumberColumn("tuned %", format="percent"),
        },
    )

if configs:
    unit_columns = [a for a in axes if a.key.startswith("units:") or a.key == LOWEST_BLOCK]
    table(
        [
            {
                "strategy": c["label"],
                "lr": c["lr"],
                "epochs": c["epochs"],
                **{a.label: c.get(a.key) for a in unit_columns},
                "tuned params": c["tuned_params"],
                "held-out acc": c["heldout_acc"],
                "test acc": c["test_acc"],
                "jobs": c["n"],
            }
            for c in inside
        ],
        key="results-configurations",
        column_config={
            "held-out acc": st.column_config.NumberColumn(format="%.4f"),
            "test acc": st.column_config.NumberColumn(format="%.4f"),
            "tuned params": st.column_config.NumberColumn(format="localized"),
        },
    )

points = summary_points(summary)
if points:
    st.plotly_chart(charts.accuracy_vs_params(points), key="results-scatter", width="stretch")
else:
    st.info(
        "No finished job in this experiment yet: the scatter appears when the first job "
        "succeeds (follow progress on the **Jobs** page)."
    )

finished = [j for j in jobs if j.status == JobStatus.SUCCEEDED and j.kind == JobKind.FINETUNE]
if finished:
    runs = {}
    with backend_errors("loading metrics"):
        for job in finished[:60]:  # keeps the page fast for very large experiments
            label = f"{job.strategy} · seed {job.seed} (#{job.id})"
            runs[label] = metrics_table(data.metrics(job.id))
    c1, c2 = st.columns(2)
    c1.plotly_chart(
        charts.compare_curves(runs, "test_acc"), key="results-test-curves", width="stretch"
    )
    c2.plotly_chart(
        charts.compare_curves(runs, "heldout_acc"),
        key="results-heldout-curves",
        width="stretch",
    )

st.subheader("Download")
d1, d2 = st.columns(2)
with backend_errors("preparing the downloads"):
    d1.download_button(
        "results.csv",
        data.results_file(experiment_id, "csv"),
        file_name=f"experiment-{experiment_id}-results.csv",
        mime="text/csv",
        key="download-csv",
    )
    d2.download_button(
        "results.json",
        data.results_file(experiment_id, "json"),
        file_name=f"experiment-{experiment_id}-results.json",
        mime="application/json",
        key="download-json",
    )

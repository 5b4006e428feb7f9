"""Results of one experiment: mean ± spread per strategy, accuracy vs tuned parameters with the
Pareto front, test and held-out curves, CSV/JSON download."""

from __future__ import annotations

import streamlit as st

from contract.vocab import JobKind, JobStatus
from dashboard import charts, data
from dashboard.shaping import metrics_table, summary_points
from dashboard.ui import backend_errors, init_state, table

init_state()
st.title("Results")

with backend_errors("loading experiments"):
    experiments = data.experiments()
if not experiments:
    st.info(
        "No experiment yet: launch one on the **New experiment** page; its results appear "
        "here as its jobs finish."
    )
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
        [row.model_dump(include=columns) for row in summary],
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

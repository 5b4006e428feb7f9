"""Jobs: a paginated table with live progress, and one job's details (config, curves, errors)
with cancel and retry."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import streamlit as st

from contract.api import JobPublic, JobsPage
from contract.vocab import JobKind, JobStatus
from dashboard import charts, data
from dashboard.client import ApiError, get_client
from dashboard.config import get_settings
from dashboard.downloads import checkpoint_button
from dashboard.progress import (
    EMPTY,
    cell,
    duration_text,
    epoch_text,
    eta_seconds,
    prefix_cache_text,
    status_text,
)
from dashboard.shaping import metrics_table
from dashboard.ui import backend_errors, flash, init_state, job_label, recipe, show_flash, table

RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)

init_state()
settings = get_settings()
st.title("Jobs")
show_flash()

with backend_errors("loading experiments"):
    experiments = data.experiments()
exp_names = {e.id: f"#{e.id} {e.name}" for e in experiments}

f1, f2, f3 = st.columns(3)
status = f1.selectbox("Status", ["any", *map(str, JobStatus)], key="jobs-status")
kind = f2.selectbox("Kind", ["any", *map(str, JobKind)], key="jobs-kind")
experiment_id = f3.selectbox(
    "Experiment",
    [None, *exp_names],
    key="jobs-experiment",
    format_func=lambda i: "any" if i is None else exp_names[i],
)
filters = {
    "status": None if status == "any" else status,
    "kind": None if kind == "any" else kind,
    "experiment_id": experiment_id,
}


def _active(job: JobPublic) -> bool:
    return not job.status.terminal


def _row(job: JobPublic, now: datetime) -> dict:
    info = job.progress_info
    speed = info.get("images_per_sec")
    return {
        "id": job.id,
        "kind": str(job.kind),
        "strategy": recipe(job),
        "seed": cell(job.seed),
        "model": cell(job.model),
        "dataset": cell(job.dataset),
        "status": status_text(job),
        "progress": job.progress,
        "epoch": cell(epoch_text(job)),
        "ETA": duration_text(eta_seconds(job, now)),
        "images/s": f"{speed:.0f}" if isinstance(speed, int | float) else EMPTY,
        "device": cell(info.get("device") or (job.result or {}).get("device")),
        "worker": cell(job.worker),
        "attempts": job.attempts,
    }


def _page_of_jobs(page: int) -> JobsPage:
    with backend_errors("loading jobs"):
        return data.jobs_page(
            limit=settings.dashboard_page_size,
            offset=(page - 1) * settings.dashboard_page_size,
            **filters,
        )


def job_table(page: int, pages: int, polling: bool) -> list[JobPublic]:
    """One page of jobs; reruns on its own while jobs on it are queued or running."""
    body = _page_of_jobs(page)  # the same cached read that decided `polling`
    jobs = body.items
    if not jobs:
        st.info(
            "No jobs match. Launch an experiment on the **New experiment** page, or a soup "
            "on the **Soups** page."
        )
        return []
    active = sum(map(_active, jobs))
    if polling and not active:
        st.rerun()  # the last job finished: redraw the page once, which stops the polling
    st.caption(
        f"{body.total} job(s) · page {page} of {pages} · {active} active "
        "on this page"
        + (f" · refreshing every {settings.dashboard_refresh_s:g}s" if active else "")
    )
    now = datetime.now(UTC)
    table(
        [_row(j, now) for j in jobs],
        key="jobs-table",
        column_config={
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "worker": st.column_config.TextColumn("worker", width="large"),
        },
    )
    return jobs


total = _page_of_jobs(1).total
pages = max(1, math.ceil(total / settings.dashboard_page_size))
page = 1
if pages > 1:
    page = int(st.number_input("Page", min_value=1, max_value=pages, value=1, key="jobs-page"))
polling = any(map(_active, _page_of_jobs(page).items))
jobs = st.fragment(run_every=settings.dashboard_refresh_s if polling else None)(job_table)(
    page, pages, polling
)
if not jobs:
    st.stop()

st.divider()
st.subheader("Job details")
# A running job first, then a queued one, then the newest; the choice then stays by key.
shown = {j.id: j for j in jobs}
first = min(
    range(len(jobs)),
    key=lambda i: (jobs[i].status != JobStatus.RUNNING, jobs[i].status != JobStatus.QUEUED, i),
)
selected = st.selectbox(
    "Job",
    list(shown),
    index=first,
    key="job-select",
    format_func=lambda i: job_label(shown[i]),
)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else duration_text(value)


def predicted_against_measured(job_id: int) -> None:
    """A finished fine-tuning job's training time (steps + prefix pass) against the cost
    preview's prediction for it (``GET /cost/jobs/{id}``)."""
    try:
        cost = data.job_cost(job_id)
    except ApiError as exc:
        st.caption(f"Predicted training time: {exc.message}")
        return
    if cost.predicted is None or cost.measured_seconds is None:
        st.caption("Predicted training time: none (no calibration of this model and dataset)")
        return
    p = cost.predicted
    predicted = p.train_seconds + p.prefix_seconds
    ratio = cost.measured_seconds / predicted if predicted > 0 else float("nan")
    st.caption(
        f"Training time: predicted {_seconds(predicted)} on {p.device_kind}, measured "
        f"{_seconds(cost.measured_seconds)} ({ratio:.2f}x the prediction); peak memory "
        f"predicted {p.peak_mb:.0f} MB"
    )


def job_detail(job_id: int, polling: bool) -> None:
    """One job, refreshed live while it runs."""
    with backend_errors(f"loading job {job_id}"):
        job = data.job(job_id)
        metrics = metrics_table(data.metrics(job_id)) if job.kind != JobKind.SOUP else []
    if polling and not _active(job):
        st.rerun()  # finished while we watched: redraw the page (buttons, curves) once
    c1, c2, c3, c4, c5 = st.columns([2, 1, 1, 1, 1])
    where = epoch_text(job)
    c1.progress(
        job.progress,
        text=f"{status_text(job)} · {100 * job.progress:.0f}%" + (f" · {where}" if where else ""),
    )
    speed = job.progress_info.get("images_per_sec")
    c2.metric("images/s", f"{speed:.0f}" if speed else EMPTY)
    c3.metric("time left", duration_text(eta_seconds(job, datetime.now(UTC))))
    if c4.button("Cancel", key="cancel-job", disabled=not _active(job) or job.cancel_requested):
        with backend_errors(f"cancelling job {job_id}"):
            get_client().cancel(job_id)
        data.clear()
        flash(f"Cancellation of job {job_id} requested.")
        st.rerun()
    if c5.button("Retry", key="retry-job", disabled=job.status not in RETRYABLE):
        with backend_errors(f"retrying job {job_id}"):
            get_client().retry(job_id)
        data.clear()
        flash(f"Job {job_id} queued again.")
        st.rerun()
    if job.error:
        st.error(f"Job {job_id} failed: {job.error}")
    if metrics:
        st.plotly_chart(
            charts.training_curves(metrics, title=f"Job {job_id}"),
            key="job-curves",
            width="stretch",
        )
    elif job.kind in EPOCH_KINDS:
        st.caption("No epoch finished yet: curves appear after the first epoch.")
    elif job.kind in PAGE_OF_KIND:
        st.caption(f"{job.kind.capitalize()} jobs have no epochs; {PAGE_OF_KIND[job.kind]}.")
    with st.expander("Config", expanded=False):
        st.json(job.config)
    cache = prefix_cache_text(job.result)
    if cache:
        st.caption(f"Frozen prefix: {cache}")
    if job.kind == JobKind.FINETUNE and job.status == JobStatus.SUCCEEDED:
        predicted_against_measured(job_id)
    checkpoint_button(job, key="download-checkpoint")
    if job.result:
        with st.expander("Result summary"):
            st.json(job.result)


# Jobs that train by epochs (curves), and where the others' results are shown.
EPOCH_KINDS = (JobKind.FINETUNE, JobKind.PRETRAIN)
PAGE_OF_KIND = {
    JobKind.SOUP: "its results are on the Soups page",
    JobKind.RANK: "its per-unit scores are on the Angles page (choose its criterion)",
    JobKind.CALIBRATE: "the New experiment page shows the cost it predicts",
}

with backend_errors(f"loading job {selected}"):
    detail_polling = _active(data.job(selected))  # job_detail's cached read
st.fragment(run_every=settings.dashboard_refresh_s if detail_polling else None)(job_detail)(
    selected, detail_polling
)

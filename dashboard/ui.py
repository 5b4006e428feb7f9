"""Small Streamlit helpers shared by the pages: session-state defaults, error display, labels,
the order reference jobs are offered in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import streamlit as st

from contract.api import JobPublic
from contract.vocab import JobKind
from dashboard.client import ApiError
from dashboard.progress import status_text

# Every session-state key the pages share, with its default (initialised in one place).
STATE_DEFAULTS: dict[str, Any] = {
    "submitted_jobs": [],  # the jobs the last "Launch" created (New experiment page)
    "last_experiment": None,  # its experiment id
    "flash": None,  # a one-shot success message shown after a rerun
}


def init_state() -> None:
    for key, value in STATE_DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value.copy() if isinstance(value, list | dict) else value


@contextmanager
def backend_errors(what: str = "") -> Iterator[None]:
    """Shows an ``ApiError`` as the backend's message (no traceback) and stops the page."""
    try:
        yield
    except ApiError as exc:
        prefix = f"{what}: " if what else ""
        st.error(prefix + exc.message, icon="⚠️")
        st.stop()


def flash(message: str) -> None:
    st.session_state["flash"] = message


def show_flash() -> None:
    message = st.session_state.get("flash")
    if message:
        st.success(message)
        st.session_state["flash"] = None


def recipe(job: JobPublic) -> str:
    """What a job runs: its strategy, ``soup (<method>)`` or its kind."""
    if job.kind == JobKind.SOUP:
        return f"soup ({job.config['method']})"
    return job.strategy or str(job.kind)


def job_label(job: JobPublic) -> str:
    """``#12 <strategy> · seed 0 · <model> / <dataset> · succeeded`` (for select boxes; a
    running job whose cancellation is pending ends ``running · cancelling``)."""
    parts = [f"#{job.id}", recipe(job)]
    if job.seed is not None:
        parts.append(f"seed {job.seed}")
    if job.model or job.dataset:
        parts.append(f"{job.model or ''} / {job.dataset or ''}".strip(" /"))
    parts.append(status_text(job))
    return " · ".join(parts)


def tuned_everything(job: JobPublic) -> bool:
    """Whether the job fine-tuned every parameter: its angles cover every unit, which is what a
    ranking by angle needs from a reference job."""
    return job.tuned_params is not None and job.tuned_params == job.total_params


def reference_order(jobs: Sequence[JobPublic]) -> list[JobPublic]:
    """Jobs that tuned everything first (`tuned_everything`), then the newest first."""
    return sorted(jobs, key=lambda j: (not tuned_everything(j), -j.id))


def table(rows: Any, *, key: str, **kwargs: Any) -> None:
    """A dataframe inside a keyed container: AppTest and browsers find it by ``key``
    (the container's CSS class is ``st-key-<key>``)."""
    kwargs.setdefault("hide_index", True)
    kwargs.setdefault("width", "stretch")
    with st.container(key=key):
        st.dataframe(rows, **kwargs)

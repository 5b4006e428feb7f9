"""Small Streamlit helpers shared by the pages: session-state defaults, error display, labels."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import streamlit as st

from dashboard.client import ApiError

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


def job_label(job: Mapping) -> str:
    """``#12 full · seed 0 · succeeded`` (for select boxes)."""
    parts = [f"#{job['id']}"]
    if job.get("kind") == "soup":
        parts.append(f"soup ({(job.get('config') or {}).get('method', '?')})")
    else:
        parts.append(str(job.get("strategy") or job.get("kind")))
    if job.get("seed") is not None:
        parts.append(f"seed {job['seed']}")
    parts.append(f"{job.get('model', '')} / {job.get('dataset', '')}")
    parts.append(str(job.get("status", "")))
    return " · ".join(p for p in parts if p.strip(" /"))


def unit_map_of(units_response: Mapping) -> dict:
    """The unit map's JSON out of the ``/models/{model}/units`` answer (bare or wrapped)."""
    return dict(units_response.get("unit_map", units_response))


def table(rows: Any, *, key: str, **kwargs: Any) -> None:
    """A dataframe inside a keyed container: AppTest and browsers find it by ``key``
    (the container's CSS class is ``st-key-<key>``)."""
    kwargs.setdefault("hide_index", True)
    kwargs.setdefault("width", "stretch")
    with st.container(key=key):
        st.dataframe(rows, **kwargs)

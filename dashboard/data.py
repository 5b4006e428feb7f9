"""Cached reads from the backend, shared by the pages (``st.cache_data`` with short TTLs).

Catalogues and unit maps barely change, so they live for minutes; job lists and progress live
for about one refresh period; results of finished jobs never change, so they live longer.
Errors are not cached: the next rerun asks again.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard.client import get_client

TERMINAL = ("succeeded", "failed", "cancelled")


@st.cache_data(ttl=10, show_spinner=False)
def health() -> dict:
    return get_client().health()


@st.cache_data(ttl=300, show_spinner=False)
def models() -> list[dict]:
    return get_client().models()


@st.cache_data(ttl=300, show_spinner=False)
def datasets() -> dict:
    return get_client().datasets()


@st.cache_data(ttl=300, show_spinner=False)
def strategies() -> list[dict]:
    return get_client().strategies()


@st.cache_data(ttl=300, show_spinner=False)
def units(model: str, num_classes: int) -> dict:
    return get_client().units(model, num_classes)


@st.cache_data(ttl=5, show_spinner=False)
def experiments() -> list[dict]:
    return get_client().experiments()


@st.cache_data(ttl=5, show_spinner=False)
def experiment(experiment_id: int) -> dict:
    return get_client().experiment(experiment_id)


@st.cache_data(ttl=1, show_spinner=False)
def jobs_page(**filters: Any) -> dict:
    return get_client().jobs(**filters)


def all_jobs(**filters: Any) -> list[dict]:
    """Every job matching the filters, page by page (bounded to a few thousand)."""
    out: list[dict] = []
    limit = 200
    for offset in range(0, 5000, limit):
        page = jobs_page(limit=limit, offset=offset, **filters)
        items = page.get("items", [])
        out += items
        if len(items) < limit or len(out) >= int(page.get("total", len(out))):
            break
    return out


@st.cache_data(ttl=1, show_spinner=False)
def job(job_id: int) -> dict:
    return get_client().job(job_id)


@st.cache_data(ttl=3, show_spinner=False)
def metrics(job_id: int) -> list[dict]:
    return get_client().metrics(job_id)


@st.cache_data(ttl=10, show_spinner=False)
def angles(job_id: int) -> dict:
    return get_client().angles(job_id)


@st.cache_data(ttl=5, show_spinner=False)
def soup(soup_id: int) -> dict:
    return get_client().soup(soup_id)


@st.cache_data(ttl=5, show_spinner=False)
def results_file(experiment_id: int, fmt: str) -> bytes:
    return get_client().results_file(experiment_id, fmt)


def clear() -> None:
    """Forget cached reads after a write (submit, cancel, retry)."""
    for fn in (experiments, experiment, jobs_page, job, metrics, soup, results_file):
        fn.clear()

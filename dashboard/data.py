"""Cached reads from the backend, shared by the pages (``st.cache_data`` with short TTLs).

Catalogues, unit maps and previews barely change, so they live for minutes; job lists and
progress live for about one refresh period; results of finished jobs never change, so they live
longer. Errors are not cached: the next rerun asks again. Values are the API's response models
(`contract.api`), copied per session by Streamlit's pickling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import streamlit as st

from contract.api import (
    AnglesPublic,
    ArtifactPublic,
    CostComparison,
    CostPreview,
    CriteriaComparison,
    CriterionEntry,
    DatasetsCatalog,
    ExperimentDetail,
    ExperimentPublic,
    Health,
    JobPublic,
    JobsPage,
    MetricPublic,
    ModelPublic,
    ModelsPage,
    RegistryEntry,
    ResultsView,
    SelectionPublic,
    SoupPublic,
    UnitsPreview,
)
from dashboard.client import get_client

MAX_JOBS = 5000  # `all_jobs` reads at most this many (page by page)


def health() -> Health:
    """Never cached: the router asks once per run, so the sidebar says what the page sees."""
    return get_client().health()


@st.cache_data(ttl=300, show_spinner=False)
def models() -> list[ModelPublic]:
    return get_client().models()


@st.cache_data(ttl=300, show_spinner=False)
def datasets() -> DatasetsCatalog:
    return get_client().datasets()


@st.cache_data(ttl=300, show_spinner=False)
def strategies() -> list[RegistryEntry]:
    return get_client().strategies()


@st.cache_data(ttl=300, show_spinner=False)
def soup_methods() -> list[RegistryEntry]:
    return get_client().soup_methods()


@st.cache_data(ttl=300, show_spinner=False)
def criteria() -> list[CriterionEntry]:
    return get_client().criteria()


@st.cache_data(ttl=5, show_spinner=False)
def criteria_comparison(
    model: str, dataset: str, k: int | None = None, order: str | None = None
) -> CriteriaComparison:
    return get_client().compare_criteria(model, dataset, k=k, order=order)


@st.cache_data(ttl=300, show_spinner=False)
def hparams() -> RegistryEntry:
    return get_client().hparams()


@st.cache_data(ttl=300, show_spinner=False)
def model_rows(pattern: str, num_classes: int) -> ModelsPage:
    return get_client().model_rows(pattern, num_classes)


@st.cache_data(ttl=300, show_spinner=False)
def units(model: str, num_classes: int) -> UnitsPreview:
    return get_client().units(model, num_classes)


@st.cache_data(ttl=300, show_spinner=False)
def _preview(body: str) -> SelectionPublic:
    return get_client().preview(json.loads(body))


def preview(body: Mapping[str, Any]) -> SelectionPublic:
    """``POST /preview``, cached per request body (each widget change is one request)."""
    return _preview(json.dumps(body, sort_keys=True))


@st.cache_data(ttl=5, show_spinner=False)
def experiments() -> list[ExperimentPublic]:
    return get_client().experiments().items


@st.cache_data(ttl=5, show_spinner=False)
def experiment(experiment_id: int) -> ExperimentDetail:
    return get_client().experiment(experiment_id)


@st.cache_data(ttl=1, show_spinner=False)
def jobs_page(**filters: Any) -> JobsPage:
    return get_client().jobs(**filters)


def all_jobs(**filters: Any) -> list[JobPublic]:
    """Every job matching the filters, page by page (bounded to `MAX_JOBS`)."""
    out: list[JobPublic] = []
    limit = 200
    for offset in range(0, MAX_JOBS, limit):
        page = jobs_page(limit=limit, offset=offset, **filters)
        out += page.items
        if len(page.items) < limit or len(out) >= page.total:
            break
    return out


@st.cache_data(ttl=1, show_spinner=False)
def job(job_id: int) -> JobPublic:
    return get_client().job(job_id)


@st.cache_data(ttl=3, show_spinner=False)
def metrics(job_id: int) -> list[MetricPublic]:
    return get_client().metrics(job_id)


@st.cache_data(ttl=10, show_spinner=False)
def angles(job_id: int) -> AnglesPublic:
    return get_client().angles(job_id)


@st.cache_data(ttl=5, show_spinner=False)
def artifacts(job_id: int) -> list[ArtifactPublic]:
    return get_client().artifacts(job_id)


@st.cache_data(ttl=5, show_spinner=False)
def soup(soup_id: int) -> SoupPublic:
    return get_client().soup(soup_id)


@st.cache_data(ttl=5, show_spinner=False)
def results(experiments: tuple[int, ...], loose: bool, soups: bool) -> ResultsView:
    return get_client().results(experiments, loose=loose, soups=soups)


@st.cache_data(ttl=5, show_spinner=False)
def results_file(experiment_id: int, fmt: str) -> bytes:
    return get_client().results_file(experiment_id, fmt)


@st.cache_data(ttl=2, show_spinner=False)  # short: a calibration may finish any time
def cost(model: str, dataset: str, **run: Any) -> CostPreview:
    return get_client().cost(model, dataset, **run)


@st.cache_data(ttl=10, show_spinner=False)
def job_cost(job_id: int) -> CostComparison:
    return get_client().job_cost(job_id)


def clear() -> None:
    """Forget cached reads after a write (submit, cancel, retry)."""
    for fn in (experiments, experiment, jobs_page, job, metrics, soup, results_file, results):
        fn.clear()

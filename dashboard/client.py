"""The dashboard's HTTP client for the pft-lab API (below `contract.vocab.API_PREFIX`, bearer
token).

Answers are parsed with the API's own response models (`contract.api`), so a page reads
``job.status``, never a guessed key, and an answer of another shape fails here, loudly, instead
of drawing an empty chart. Every backend failure becomes an ``ApiError`` carrying the backend's
own message (FastAPI's ``detail``, validation errors as ``field: message``), so pages show what
the backend said, never a traceback. The client is shared by all sessions of one Streamlit
server (``get_client``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx
import streamlit as st
from pydantic import TypeAdapter, ValidationError

from contract.api import (
    AnglesPublic,
    ArtifactPublic,
    CostComparison,
    CostPreview,
    CriteriaComparison,
    CriterionEntry,
    DatasetsCatalog,
    ExperimentCreated,
    ExperimentDetail,
    ExperimentsPage,
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
from contract.vocab import API_PREFIX
from dashboard.config import DashboardSettings, get_settings

T = TypeVar("T")
RESULT_FORMATS = ("csv", "json")


class ApiError(Exception):
    """A request the backend refused or could not answer; ``str()`` is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # 0: the backend could not be reached
        self.message = message


def _field(loc: Any) -> str:
    parts = [str(p) for p in (loc or []) if p not in ("body", "query", "path")]
    return ".".join(parts)


def error_message(response: httpx.Response) -> str:
    """The human part of an error response: FastAPI's ``{"detail": str | [errors]}``, or the
    text of a proxy's error page."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or f"HTTP {response.status_code} {response.reason_phrase}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # request validation errors
        lines = []
        for item in detail:
            where = _field(item.get("loc")) if isinstance(item, dict) else ""
            msg = item.get("msg", str(item)) if isinstance(item, dict) else str(item)
            lines.append(f"{where}: {msg}" if where else str(msg))
        return "; ".join(lines)
    if detail is not None:
        return str(detail)
    return f"HTTP {response.status_code} {response.reason_phrase}"


class ApiClient:
    """One method per API route the dashboard uses; each returns the route's response model."""

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str | None] | None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._http = httpx.Client(
            base_url=self.base_url + API_PREFIX, timeout=timeout, transport=transport
        )

    def _auth(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(
        self, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        """The response of one request; statuses >= 400 not in ``accept`` raise ``ApiError``."""
        try:
            response = self._http.request(method, path, headers=self._auth(), **kwargs)
        except httpx.TimeoutException:
            raise ApiError(0, f"the backend at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(
                0,
                f"cannot reach the backend at {self.base_url} ({type(exc).__name__}); "
                "start it with `pft api` or `pft up`, or set PFT_API_URL",
            ) from None
        if response.status_code >= 400 and response.status_code not in accept:
            message = error_message(response)
            if response.status_code == 401:
                message = (
                    f"{message} — the dashboard's token is missing or wrong: set "
                    "PFT_API_TOKEN or PFT_DATA_DIR to the API's data folder"
                )
            raise ApiError(response.status_code, message)
        return response

    def _get(self, model: type[T] | Any, method: str, path: str, **kwargs: Any) -> T:
        """The answer of one route, validated as ``model`` (a class or a ``list[...]`` type)."""
        response = self.request(method, path, **kwargs)
        try:
            return TypeAdapter(model).validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                response.status_code,
                f"the backend answered {method} {path} in an unexpected shape "
                f"(is it another version of pft-lab?): {exc.errors()[0]['msg']}",
            ) from None

    # health and catalogues
    def health(self) -> Health:
        """The API's health; a degraded API answers 503 with the same body."""
        return self._get(Health, "GET", "/health", accept=(503,))

    def models(self) -> list[ModelPublic]:
        return self._get(list[ModelPublic], "GET", "/catalog/models")

    def datasets(self) -> DatasetsCatalog:
        return self._get(DatasetsCatalog, "GET", "/catalog/datasets")

    def strategies(self) -> list[RegistryEntry]:
        return self._get(list[RegistryEntry], "GET", "/catalog/strategies")

    def soup_methods(self) -> list[RegistryEntry]:
        return self._get(list[RegistryEntry], "GET", "/catalog/soups")

    def criteria(self) -> list[CriterionEntry]:
        """The selection criteria (those without ``needs_reference`` run as rank jobs)."""
        return self._get(list[CriterionEntry], "GET", "/catalog/criteria")

    def compare_criteria(
        self, model: str, dataset: str, *, k: int | None = None, order: str | None = None
    ) -> CriteriaComparison:
        """How the newest scores of each criterion on ``model`` and ``dataset`` agree."""
        given = {"k": k, "order": order}
        params = {"model": model, "dataset": dataset, **{n: v for n, v in given.items() if v}}
        return self._get(CriteriaComparison, "GET", "/criteria/compare", params=params)

    def hparams(self) -> RegistryEntry:
        """The training hyperparameters with their defaults and accepted ranges."""
        return self._get(RegistryEntry, "GET", "/catalog/hparams")

    def model_rows(self, pattern: str, num_classes: int) -> ModelsPage:
        """The model picker's rows for ``pattern``: mapped or refused with the reason."""
        return self._get(
            ModelsPage, "GET", "/models", params={"pattern": pattern, "num_classes": num_classes}
        )

    def units(self, model: str, num_classes: int) -> UnitsPreview:
        return self._get(
            UnitsPreview, "GET", f"/models/{model}/units", params={"num_classes": num_classes}
        )

    def preview(self, body: Mapping[str, Any]) -> SelectionPublic:
        """What a strategy with parameters tunes on a model, before anything is launched."""
        return self._get(SelectionPublic, "POST", "/preview", json=dict(body))

    def cost(self, model: str, dataset: str, **run: Any) -> CostPreview:
        """Predicted time and peak memory per strategy (``run``: epochs, batch_size, augment,
        prefix_cache), or why there is no calibration yet."""
        given = {k: v for k, v in run.items() if v is not None}
        params = {"model": model, "dataset": dataset, **given}
        return self._get(CostPreview, "GET", "/cost", params=params)

    def job_cost(self, job_id: int) -> CostComparison:
        """A fine-tuning job's predicted against measured training time."""
        return self._get(CostComparison, "GET", f"/cost/jobs/{job_id}")

    # submitting work
    def create_experiment(self, body: Mapping[str, Any]) -> ExperimentCreated:
        return self._get(ExperimentCreated, "POST", "/experiments", json=dict(body))

    def create_job(self, body: Mapping[str, Any]) -> JobPublic:
        return self._get(JobPublic, "POST", "/jobs", json=dict(body))

    def create_soup(self, body: Mapping[str, Any]) -> SoupPublic:
        return self._get(SoupPublic, "POST", "/soups", json=dict(body))

    def cancel(self, job_id: int) -> JobPublic:
        return self._get(JobPublic, "POST", f"/jobs/{job_id}/cancel")

    def retry(self, job_id: int) -> JobPublic:
        return self._get(JobPublic, "POST", f"/jobs/{job_id}/retry")

    # reading results
    def jobs(self, **filters: Any) -> JobsPage:
        """One page of jobs; filters (``status``, ``kind``, ``experiment_id``, ``limit``,
        ``offset``) pass through, empty ones are left out."""
        params = {k: v for k, v in filters.items() if v not in (None, "", [])}
        return self._get(JobsPage, "GET", "/jobs", params=params)

    def job(self, job_id: int) -> JobPublic:
        return self._get(JobPublic, "GET", f"/jobs/{job_id}")

    def metrics(self, job_id: int) -> list[MetricPublic]:
        return self._get(list[MetricPublic], "GET", f"/jobs/{job_id}/metrics")

    def angles(self, job_id: int) -> AnglesPublic:
        return self._get(AnglesPublic, "GET", f"/jobs/{job_id}/angles")

    def artifacts(self, job_id: int) -> list[ArtifactPublic]:
        """The job's stored files (kind, size, sha256, ``download`` path)."""
        return self._get(list[ArtifactPublic], "GET", f"/jobs/{job_id}/artifacts")

    def artifact_file(self, job_id: int, kind: str) -> bytes:
        """The bytes of one of the job's files, as the API checked them against their recorded
        sha256 (fetched here, with the token: the browser gets only the bytes)."""
        return self.request("GET", f"/jobs/{job_id}/artifacts/{kind}/file").content

    def soup(self, soup_id: int) -> SoupPublic:
        return self._get(SoupPublic, "GET", f"/soups/{soup_id}")

    def experiments(self, limit: int = 200) -> ExperimentsPage:
        """The newest experiments first."""
        return self._get(ExperimentsPage, "GET", "/experiments", params={"limit": limit})

    def experiment(self, experiment_id: int) -> ExperimentDetail:
        return self._get(ExperimentDetail, "GET", f"/experiments/{experiment_id}")

    def results(
        self, experiments: Sequence[int] = (), *, loose: bool = False, soups: bool = False
    ) -> ResultsView:
        """Any set of jobs side by side: the ``experiments``' jobs, the loose fine-tuning jobs
        (of no experiment) and the soups, grouped by recipe with spreads over seeds."""
        params: dict[str, Any] = {"loose": loose, "soups": soups}
        if experiments:
            params["experiments"] = ",".join(str(int(i)) for i in experiments)
        return self._get(ResultsView, "GET", "/results", params=params)

    def results_file(self, experiment_id: int, fmt: str) -> bytes:
        if fmt not in RESULT_FORMATS:
            raise ValueError(f"fmt must be csv or json, got {fmt!r}")
        return self.request("GET", f"/experiments/{experiment_id}/results.{fmt}").content

    def close(self) -> None:
        self._http.close()


def client_from_settings(settings: DashboardSettings | None = None) -> ApiClient:
    settings = settings or get_settings()
    return ApiClient(settings.resolved_api_url, settings.token, timeout=settings.api_timeout_s)


@st.cache_resource(show_spinner=False)
def get_client() -> ApiClient:
    """The one client of this Streamlit server (its connection pool is shared by sessions)."""
    return client_from_settings()

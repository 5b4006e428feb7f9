"""The dashboard's HTTP client for the pft-lab API (``/api/v1``, bearer token).

Every backend failure becomes an ``ApiError`` carrying the backend's own message (FastAPI's
``detail``, validation errors as ``field: message``), so pages show what the backend said, never
a traceback. The client is shared by all sessions of one Streamlit server (``get_client``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx
import streamlit as st

from dashboard.config import DashboardSettings, get_settings

API_PREFIX = "/api/v1"


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
    """The human part of an error response, whatever shape the backend gave it."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or f"HTTP {response.status_code} {response.reason_phrase}"
    detail = (
        body.get("detail", body.get("error", body.get("message")))
        if isinstance(body, dict)
        else body
    )
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("msg") or detail.get("detail") or detail
    if isinstance(detail, list):  # FastAPI / pydantic validation errors
        lines = []
        for item in detail:
            if isinstance(item, dict):
                where = _field(item.get("loc"))
                msg = item.get("msg") or item.get("message") or str(item)
                lines.append(f"{where}: {msg}" if where else str(msg))
            else:
                lines.append(str(item))
        return "; ".join(lines)
    return str(detail) if detail is not None else f"HTTP {response.status_code}"


class ApiClient:
    """Thin typed wrappers over the API routes; each returns the decoded JSON."""

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

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
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
        if response.status_code >= 400:
            message = error_message(response)
            if response.status_code == 401:
                message = (
                    f"{message} — the dashboard's token is missing or wrong: set "
                    "PFT_API_TOKEN or PFT_DATA_DIR to the API's data folder"
                )
            raise ApiError(response.status_code, message)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # health and catalogues
    def health(self) -> dict:
        return self._json("GET", "/health")

    def models(self) -> list[dict]:
        return _items(self._json("GET", "/catalog/models"))

    def datasets(self) -> dict:
        """``{"datasets": [{"name", "description", "num_classes"}], "shifts": [...]}``."""
        return self._json("GET", "/catalog/datasets")

    def strategies(self) -> list[dict]:
        return _items(self._json("GET", "/catalog/strategies"))

    def units(self, model: str, num_classes: int) -> dict:
        return self._json("GET", f"/models/{model}/units", params={"num_classes": num_classes})

    # submitting work
    def create_experiment(self, body: Mapping[str, Any]) -> dict:
        return self._json("POST", "/experiments", json=dict(body))

    def create_job(self, body: Mapping[str, Any]) -> dict:
        return self._json("POST", "/jobs", json=dict(body))

    def create_soup(self, body: Mapping[str, Any]) -> dict:
        return self._json("POST", "/soups", json=dict(body))

    def cancel(self, job_id: int) -> dict:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def retry(self, job_id: int) -> dict:
        return self._json("POST", f"/jobs/{job_id}/retry")

    # reading results
    def jobs(self, **filters: Any) -> dict:
        """One page of jobs: ``{"items": [...], "total": n, ...}``; filters pass through."""
        params = {k: v for k, v in filters.items() if v not in (None, "", [])}
        body = self._json("GET", "/jobs", params=params)
        return body if isinstance(body, dict) else {"items": body, "total": len(body)}

    def job(self, job_id: int) -> dict:
        return self._json("GET", f"/jobs/{job_id}")

    def metrics(self, job_id: int) -> list[dict]:
        return _items(self._json("GET", f"/jobs/{job_id}/metrics"))

    def angles(self, job_id: int) -> dict:
        return self._json("GET", f"/jobs/{job_id}/angles")

    def soup(self, soup_id: int) -> dict:
        return self._json("GET", f"/soups/{soup_id}")

    def experiments(self, limit: int = 200) -> list[dict]:
        """The newest experiments first."""
        return _items(self._json("GET", "/experiments", params={"limit": limit}))

    def experiment(self, experiment_id: int) -> dict:
        return self._json("GET", f"/experiments/{experiment_id}")

    def results_file(self, experiment_id: int, fmt: str) -> bytes:
        if fmt not in ("csv", "json"):
            raise ValueError(f"fmt must be csv or json, got {fmt!r}")
        return self.request("GET", f"/experiments/{experiment_id}/results.{fmt}").content

    def close(self) -> None:
        self._http.close()


def _items(body: Any) -> list[dict]:
    """Lists come bare or wrapped (``{"items": [...]}``)."""
    if isinstance(body, dict):
        for key in ("items", "results", "data"):
            if isinstance(body.get(key), list):
                return body[key]
    return list(body)


def client_from_settings(settings: DashboardSettings | None = None) -> ApiClient:
    settings = settings or get_settings()
    return ApiClient(settings.api_url, settings.token, timeout=settings.api_timeout_s)


@st.cache_resource(show_spinner=False)
def get_client() -> ApiClient:
    """The one client of this Streamlit server (its connection pool is shared by sessions)."""
    return client_from_settings()

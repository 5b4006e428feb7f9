"""Pages on an empty lab say what to do next; an unreachable backend is one clear message."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.dashboard.conftest import Backend, forget_caches, point_dashboard_at, running_backend
from tests.dashboard.test_pages import assert_clean, page

pytestmark = pytest.mark.timeout(120)

NEXT_STEPS = {
    "jobs": "Launch an experiment on the **New experiment** page",
    "results": "No experiment yet: launch one on the **New experiment** page",
    "angles": "No finished fine-tuning job yet: launch one on the **New experiment** page",
    "soups": "No finished fine-tuning job yet: a soup averages finished fine-tuning jobs",
}


@pytest.fixture(scope="module")
def empty_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with running_backend(tmp_path_factory.mktemp("pft-dashboard-empty")) as b:
        yield b


@pytest.mark.parametrize("name", sorted(NEXT_STEPS))
def test_empty_pages_say_what_to_do_next(name, empty_backend, monkeypatch):
    point_dashboard_at(empty_backend, monkeypatch)
    try:
        at = page(name).run()
        assert_clean(at, empty_backend)
        assert not at.error
        assert any(NEXT_STEPS[name] in i.value for i in at.info), [i.value for i in at.info]
    finally:
        forget_caches()


def test_new_experiment_page_works_on_an_empty_lab(empty_backend, monkeypatch):
    point_dashboard_at(empty_backend, monkeypatch)
    try:
        at = page("new_experiment").run()
        assert_clean(at, empty_backend)
        assert not at.error
        assert any(o.startswith("pft/vit-micro — ") for o in at.selectbox(key="model").options)
        assert not at.session_state["submitted_jobs"]
    finally:
        forget_caches()


def test_router_shows_backend_health(empty_backend, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.dashboard.test_pages import PAGES

    point_dashboard_at(empty_backend, monkeypatch)
    try:
        at = AppTest.from_file(str(PAGES.parent / "app.py"), default_timeout=30).run()
        assert_clean(at, empty_backend)
        captions = [c.value for c in at.sidebar.caption]
        assert f"API: {empty_backend.url}" in captions
        assert any("backend healthy" in c or "backend degraded" in c for c in captions)
        assert at.title[0].value == "New experiment"  # the default page
    finally:
        forget_caches()


@pytest.mark.parametrize("name", ["new_experiment", "jobs", "results", "angles", "soups"])
def test_unreachable_backend_is_one_clear_error(name, monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = Backend(f"http://127.0.0.1:{port}", "unused-token", tmp_path, "")
    point_dashboard_at(gone, monkeypatch)
    try:
        at = page(name).run()
        assert not at.exception
        (error,) = at.error
        assert f"cannot reach the backend at {gone.url}" in error.value
        assert "Traceback" not in error.value
    finally:
        forget_caches()

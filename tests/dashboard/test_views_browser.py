"""The Results and Soups views in a real browser (headless Chromium through Playwright).

The dashboard runs as `streamlit run dashboard/app.py` against the page tests' real backend
(conftest.py), fed by the real engine: three fine-tuning jobs of one experiment and a TIES soup
of two of them, each claimed, run and reported on the worker routes. Then, in the browser:
brushing one axis of the Results page's parallel coordinates (a mouse drag inside the
component's iframe) takes rows out of the results table; and the Soups page shows the soup's
per-unit mixing weights as served by ``GET /soups/{id}``, next to its lineage graph.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import Backend, Engine, api, submit_experiment
from tests.utils.parcoords import brush
from tests.utils.streamlit_server import streamlit_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
UI_TIMEOUT_MS = 60_000
STRATEGIES = ("full", "attn_only", "ffn_last_half")

if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt install chromium, or set PFT_CHROMIUM)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def lab(backend: Backend, engine: Engine) -> dict:
    """An experiment of three finished jobs and a finished TIES soup of two of them."""
    created = submit_experiment(
        backend, [{"name": n} for n in STRATEGIES], hparams={"epochs": 1}, name="browser views"
    )
    jobs = {j["strategy"]: j["id"] for j in created["jobs"]}
    for job_id in jobs.values():
        engine.finish(backend, job_id)
    with backend.client() as c:
        body = {"ingredients": [jobs["full"], jobs["attn_only"]], "method": "ties"}
        r = c.post("/soups", json=body)
    assert r.status_code == 201, r.text
    soup_id = r.json()["id"]
    engine.finish(backend, soup_id)
    return {"experiment": created["experiment"]["id"], "jobs": jobs, "soup": soup_id}


@pytest.fixture(scope="module")
def dashboard(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard as `pft up` runs it, on a free port, talking to the test backend."""
    env = {
        "PFT_API_URL": backend.url,
        "PFT_API_TOKEN": backend.token,
        "PFT_DATA_DIR": str(backend.data_dir),
    }
    with streamlit_server(env, tmp_path_factory.mktemp("dashboard")) as url:
        yield url


@pytest.fixture(scope="module")
def page(dashboard: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            pg.set_default_timeout(UI_TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


def _no_exception(page: Any) -> None:
    errors = page.locator("[data-testid='stException']")
    assert not errors.count(), errors.first.inner_text()


def _settle(page: Any) -> None:
    """Waits until the script is not rerunning (Streamlit's "Running..." status is gone)."""
    page.wait_for_timeout(300)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=UI_TIMEOUT_MS)


def _choose(page: Any, key: str, option_text: str) -> None:
    page.locator(f".st-key-{key}").get_by_role("combobox").click()
    page.get_by_role("option").filter(has_text=option_text).first.click()
    _settle(page)


def _grid(page: Any, key: str) -> list[dict[str, str]]:
    """The rows of the st.dataframe under ``key``, from its accessible table."""
    grid = page.locator(f".st-key-{key}")
    headers = grid.locator("[role='columnheader']").all_inner_texts()
    rows = []
    for row in grid.locator("[role='row']").all()[1:]:
        cells = row.locator("[role='gridcell']").all_inner_texts()
        if cells:
            rows.append(dict(zip(headers, cells, strict=False)))
    return rows


def _poll(until, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = until()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(what)
        time.sleep(0.3)


def test_brushing_the_parallel_coordinates_filters_the_results_table(
    lab: dict, dashboard: str, page: Any, backend: Backend
) -> None:
    page.goto(dashboard + "/results")
    page.locator(".st-key-results-experiment [role='combobox']").wait_for()
    _choose(page, "results-experiment", f"#{lab['experiment']} ")
    page.locator(".st-key-results-table [role='gridcell']").first.wait_for(state="attached")
    _no_exception(page)
    before = {r["strategy"] for r in _grid(page, "results-table")}
    assert before == set(STRATEGIES)
    frame = page.frame_locator(".st-key-results-parcoords iframe")
    frame.locator(".parcoords").first.wait_for(state="attached")

    # The largest tuned-parameter count is full fine-tuning's: brushing the top of the axis
    # keeps it and drops the partial strategies.
    tuned = {
        j["strategy"]: j["tuned_params"]
        for j in api(backend, "/jobs", limit=200)["items"]
        if j["id"] in lab["jobs"].values()
    }
    assert tuned["full"] > max(tuned["attn_only"], tuned["ffn_last_half"])
    brush(page, "tuned params", 0.25, -0.1)  # upwards, past the top (the brush stops there)

    def filtered() -> set[str] | None:
        _no_exception(page)
        rows = {r.get("strategy") for r in _grid(page, "results-table")}
        return rows if rows and None not in rows and rows != before else None

    after = _poll(filtered, 30, "brushing the parallel coordinates did not filter the table")
    assert after == {"full"}
    assert page.get_by_text("Brushed: 1 of 3 configuration(s)").count() == 1
    configs = [r["strategy"] for r in _grid(page, "results-configurations")]
    assert configs == ["full"]


def test_soups_page_shows_the_mixing_weights_of_a_ties_soup(
    lab: dict, dashboard: str, page: Any, backend: Backend
) -> None:
    soup = api(backend, f"/soups/{lab['soup']}")
    assert soup["method"] == "ties" and soup["status"] == "succeeded"
    units = soup["mixing"]["units"]
    assert units and soup["mixing"]["weight"] == "kept"
    page.goto(dashboard + "/soups")
    page.locator(".st-key-soup-select [role='combobox']").wait_for()
    _choose(page, "soup-select", f"#{lab['soup']} ")
    selector = ".st-key-soup-mixing .js-plotly-plot"
    page.locator(selector).wait_for()
    _no_exception(page)
    heat = page.evaluate(
        "s => { const t = document.querySelector(s).data[0]; return {x: t.x, y: t.y, z: t.z}; }",
        selector,
    )
    assert heat["y"] == list(units)
    assert heat["x"] == [f"job {i}" for i in soup["ingredients"]]
    for unit, row in zip(heat["y"], heat["z"], strict=True):
        filled = [v for v in row if v is not None]
        assert len(filled) == units[unit]["ingredients"], (unit, row)
        assert filled == pytest.approx([units[unit]["weight"]] * len(filled)), unit
    # attn_only froze the FFN units: only the full run's column has them.
    ffn = [row for unit, row in zip(heat["y"], heat["z"], strict=True) if unit.startswith("FFN")]
    assert ffn and all(row[1] is None and row[0] is not None for row in ffn)
    graph = page.evaluate(
        """() => document.querySelector('.st-key-soup-lineage-graph .js-plotly-plot')
                 .data.map(t => ({name: t.name, text: t.text}))"""
    )
    nodes = {t["name"]: t["text"] for t in graph if t["text"]}
    assert [label.split()[0] for label in nodes["ingredients"]] == [
        f"#{i}" for i in soup["ingredients"]
    ]
    assert nodes["soup"] == [f"soup #{lab['soup']} (ties)"]

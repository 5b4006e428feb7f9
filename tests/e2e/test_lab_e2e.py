"""End to end: the lab as `make up` starts it, driven through headless Chromium.

Starts `pft up` (Redis, API, worker, dashboard as real processes) in a temporary data folder on
free ports, then, in the browser: submits an experiment (synthetic dataset, `pft/vit-micro`,
strategies `full` and `attn_only`, one epoch), waits on the Jobs page until both jobs succeed,
checks the Results table against the API and brushes its parallel coordinates, checks the
Angles heatmap against the API, starts a `gradient_norm` rank
job on the Angles page and checks its per-unit scores, builds a TIES soup on the Soups page and
checks its per-unit mixing weights; finally stops the lab and checks no process is left behind.

Screenshots of every page go to ``test-artifacts/`` (gitignored), and one of the New experiment
page to ``docs/img/dashboard.png`` for the README. Nothing is mocked; the browser is the
system's Chromium (Debian package `chromium`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.api import AnglesPublic
from tests.lab.lab_process import LabProcess, kill_leftovers, lab_env, wait_gone
from tests.utils.parcoords import brush

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
README_SHOT = ROOT / "docs" / "img" / "dashboard.png"
README_SHOT_MAX_BYTES = 300_000
CHROMIUM = os.environ.get("PFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MODEL, DATASET, STRATEGIES = "pft/vit-micro", "synthetic", ("full", "attn_only")
JOBS_TIMEOUT_S = 300  # both one-epoch jobs on a busy 2-core machine (about 30 s each alone)
SOUP_TIMEOUT_S = 120
UI_TIMEOUT_MS = 45_000  # one page render, with the backend and the worker busy

if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt install chromium, or set PFT_CHROMIUM)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")


# --- the lab and the browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    data = tmp_path_factory.mktemp("e2e") / "data"
    proc = LabProcess.start(lab_env(data))
    try:
        proc.wait_up()
        yield proc
    finally:
        records = proc.service_records()
        if proc.proc.poll() is None:
            proc.stop()
        kill_leftovers(records)  # a safety net only: the test asserts a clean stop itself
        _copy_logs(proc)


@pytest.fixture(scope="module")
def page(lab: LabProcess) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            pg = context.new_page()
            pg.set_default_timeout(UI_TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


def _copy_logs(lab: LabProcess) -> None:
    """Keeps the services' logs next to the screenshots, for a failed CI run."""
    out = ARTIFACTS / "e2e-logs"
    out.mkdir(parents=True, exist_ok=True)
    for log in (lab.data_dir / "logs").glob("*.log"):
        shutil.copy(log, out / log.name)


def _api(lab: LabProcess, path: str) -> Any:
    token = (lab.data_dir / "api_token").read_text().strip()
    req = urllib.request.Request(lab.api_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _jobs(lab: LabProcess, kind: str) -> list[dict]:
    return _api(lab, f"/api/v1/jobs?kind={kind}&limit=100")["items"]


# --- page helpers ---------------------------------------------------------------------------


def _open(page: Any, lab: LabProcess, path: str, ready: str) -> None:
    """Loads a dashboard page and waits for the element ``ready`` (a CSS selector)."""
    page.goto(lab.dashboard_url + path)
    _wait_for(page, ready, f"page {path or '/'}")


def _wait_for(page: Any, selector: str, what: str, timeout_ms: int = UI_TIMEOUT_MS) -> None:
    # Data-grid cells live in an off-screen accessible table: attached, never "visible".
    state = "attached" if "gridcell" in selector else "visible"
    try:
        page.locator(selector).first.wait_for(timeout=timeout_ms, state=state)
    except sync_api.TimeoutError:
        _fail_with_page(page, f"{what}: {selector} did not appear within {timeout_ms} ms")
    _no_exception(page)


def _no_exception(page: Any) -> None:
    errors = page.locator("[data-testid='stException']")
    if errors.count():
        _fail_with_page(page, "the dashboard shows an exception:\n" + errors.first.inner_text())


def _fail_with_page(page: Any, message: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "e2e-failure.png"
    page.screenshot(path=str(shot), full_page=True)
    main = page.locator("[data-testid='stMain']")
    text = main.inner_text()[:2000] if main.count() else ""
    pytest.fail(f"{message}\n(screenshot: {shot})\npage text:\n{text}")


def _choose(page: Any, key: str, option_text: str) -> None:
    """Picks the option starting with ``option_text`` in the select box with key ``key``."""
    page.locator(f".st-key-{key}").get_by_role("combobox").click()
    page.get_by_role("option").filter(has_text=option_text).first.click()


def _settle(page: Any) -> None:
    """Waits until the script is not rerunning (Streamlit's "Running..." status is gone)."""
    page.wait_for_timeout(300)  # a rerun the last input triggered shows its status first
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=UI_TIMEOUT_MS)


def _set_number(page: Any, key: str, value: str) -> None:
    """Types ``value`` into a number box, as a user would: after the page has settled, and
    again if a rerun that was already under way redrew the box with its old value."""
    box = page.locator(f".st-key-{key} input")
    for _ in range(5):
        _settle(page)
        box.fill(value)
        box.press("Enter")
        _settle(page)
        if box.input_value() == value:
            return
    _fail_with_page(page, f"the {key} box kept {box.input_value()!r} instead of {value!r}")


def _button(page: Any, key: str) -> Any:
    """The button with key ``key`` (not a stale copy left while the page reruns)."""
    return page.locator(f".st-key-{key}:not([data-stale='true']) button").first


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


def _plotly_traces(page: Any, key: str) -> list[dict]:
    return page.evaluate(
        """key => {
            const el = document.querySelector(`.st-key-${key} .js-plotly-plot`);
            return el ? el.data.map(t => ({type: t.type, x: t.x, y: t.y, z: t.z})) : null;
        }""",
        key,
    )


def _poll(until: Callable[[], Any], timeout_s: float, every_s: float, on_timeout: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = until()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(on_timeout)
        time.sleep(every_s)


def _scroll_top(page: Any) -> None:
    """Scrolls Streamlit's main container (not the window) back to the page title."""
    page.evaluate(
        """() => {
            document.activeElement && document.activeElement.blur();
            for (let e = document.querySelector('h1'); e; e = e.parentElement) e.scrollTop = 0;
        }"""
    )


def _shot(page: Any, name: str, focus: str | None = None) -> None:
    """A screenshot of the viewport, scrolled to the element with key ``focus`` if given
    (Streamlit scrolls an inner container, so a full-page screenshot is one viewport)."""
    ARTIFACTS.mkdir(exist_ok=True)
    if focus:
        page.locator(f".st-key-{focus}").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"e2e-{name}.png"))


def _readme_shot(page: Any) -> None:
    """The README's picture of the dashboard: one viewport, kept under 300 KB."""
    from PIL import Image

    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    _scroll_top(page)
    page.wait_for_timeout(300)
    raw = ARTIFACTS / "e2e-readme-raw.png"
    page.screenshot(path=str(raw))
    image = Image.open(raw).convert("RGB")
    width = 1400
    while True:
        scaled = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        scaled = scaled.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        scaled.save(README_SHOT, optimize=True)
        if README_SHOT.stat().st_size < README_SHOT_MAX_BYTES or width <= 700:
            break
        width -= 200
    assert README_SHOT.stat().st_size < README_SHOT_MAX_BYTES


# --- the flow -------------------------------------------------------------------------------


def test_experiment_results_angles_and_soup_through_the_browser(lab: LabProcess, page: Any) -> None:
    records = lab.service_records()
    assert set(records) == {"redis", "api", "worker", "dashboard"}
    for old in ARTIFACTS.glob("e2e-*.png"):
        old.unlink()  # no stale screenshot from an earlier run

    experiment_id = _submit_experiment(page, lab)
    jobs = _wait_for_jobs(page, lab, experiment_id)
    _check_results(page, lab, experiment_id, jobs)
    _check_angles(page, lab, jobs)
    _rank_by_gradient_norm(page, lab)
    _build_soup(page, lab, jobs)

    # Shut down the way a user does (SIGTERM/Ctrl-C to the launcher): nothing may survive.
    assert lab.stop() == 0, lab.output
    assert wait_gone(records) == [], f"processes left behind: {records}"
    assert not list((lab.data_dir / "run").glob("*.pid"))


def _submit_experiment(page: Any, lab: LabProcess) -> int:
    _open(page, lab, "", ".st-key-model [role='combobox']")
    _choose(page, "model", f"{MODEL} —")
    _wait_for(page, ".st-key-dataset [role='combobox']", "the dataset box")
    _choose(page, "dataset", f"{DATASET} —")
    for name in STRATEGIES:  # the page preselects full and attn_only; pick them if not
        if name not in page.locator(".st-key-strategies").inner_text().split():
            page.locator(".st-key-strategies [role='combobox']").click()
            page.get_by_role("option").filter(has_text=re.compile(f"^{name}$")).first.click()
            page.keyboard.press("Escape")
    chosen = page.locator(".st-key-strategies").inner_text().split()
    assert all(name in chosen for name in STRATEGIES), f"strategies selected: {chosen}"
    _set_number(page, "hp-epochs", "1")
    name_box = page.locator(".st-key-experiment-name input")
    name_box.fill("e2e: micro on synthetic")
    name_box.press("Enter")
    # The unit preview shows both strategies before anything is launched.
    _wait_for(page, ".st-key-unit-grid .js-plotly-plot", "the unit preview")
    page.wait_for_timeout(1000)  # let the last rerun settle before the screenshot and click
    assert page.locator(".st-key-hp-epochs input").input_value() == "1"
    _readme_shot(page)
    _shot(page, "1-new-experiment")

    _button(page, "submit-experiment").click()
    created = page.get_by_text(re.compile(r"Experiment #\d+ created with 2 job"))
    try:
        created.wait_for(timeout=UI_TIMEOUT_MS)
    except sync_api.TimeoutError:
        _fail_with_page(page, "submitting the experiment showed no confirmation")
    experiment_id = int(re.search(r"#(\d+)", created.inner_text()).group(1))
    jobs = [j for j in _jobs(lab, "finetune") if j["experiment_id"] == experiment_id]
    assert sorted(j["strategy"] for j in jobs) == sorted(STRATEGIES)
    assert {j["model"] for j in jobs} == {MODEL} and {j["dataset"] for j in jobs} == {DATASET}
    assert all(j["config"]["hparams"]["epochs"] == 1 for j in jobs)
    return experiment_id


def _wait_for_jobs(page: Any, lab: LabProcess, experiment_id: int) -> dict[str, dict]:
    """Watches the Jobs page (it refreshes itself) until both jobs succeeded."""
    _open(page, lab, "/jobs", ".st-key-jobs-table [role='gridcell']")

    def finished() -> list[dict] | None:
        _no_exception(page)
        rows = [r for r in _grid(page, "jobs-table") if r.get("strategy") in STRATEGIES]
        statuses = {r["strategy"]: r.get("status") for r in rows}
        if any(s in ("failed", "cancelled") for s in statuses.values()):
            api = _jobs(lab, "finetune")
            pytest.fail(f"a job did not succeed: {statuses}\n{[j.get('error') for j in api]}")
        return rows if len(rows) == 2 and set(statuses.values()) == {"succeeded"} else None

    rows = _poll(
        finished,
        JOBS_TIMEOUT_S,
        2,
        f"the jobs did not both succeed within {JOBS_TIMEOUT_S} s; API says "
        f"{[(j['id'], j['status'], j['progress']) for j in _jobs(lab, 'finetune')]}\n" + lab.logs(),
    )
    _shot(page, "2-jobs")
    jobs = {j["strategy"]: j for j in _jobs(lab, "finetune") if j["experiment_id"] == experiment_id}
    for row in rows:
        job = jobs[row["strategy"]]
        assert int(row["id"]) == job["id"] and job["status"] == "succeeded"
        # The grid's accessible text is the raw fraction or a percentage, by Streamlit version.
        assert float(row["progress"].rstrip("%")) in (1.0, 100.0), row
        assert job["progress"] == pytest.approx(1.0)
    return jobs


def _check_results(page: Any, lab: LabProcess, experiment_id: int, jobs: dict) -> None:
    _open(page, lab, "/results", ".st-key-results-table [role='gridcell']")
    shown = page.locator(".st-key-results-experiment [role='combobox']").input_value()
    assert shown.startswith(f"#{experiment_id} "), f"results show {shown!r}"
    rows = {r["strategy"]: r for r in _grid(page, "results-table")}
    assert set(STRATEGIES) <= set(rows), f"results table rows: {list(rows)}"
    for name in STRATEGIES:
        row, result = rows[name], jobs[name]["result"]
        assert int(row["succeeded"]) == 1, row
        test_acc = next(v for k, v in row.items() if k.startswith("test acc"))
        assert float(test_acc) == pytest.approx(result["test_acc"], abs=1e-6), (row, result)
        assert 0.0 <= float(test_acc) <= 1.0
        assert int(row["tuned params"]) == jobs[name]["tuned_params"]
    assert int(rows["attn_only"]["tuned params"]) < int(rows["full"]["tuned params"])
    # The accuracy-vs-parameters plot has one point per strategy.
    traces = _plotly_traces(page, "results-scatter")
    assert traces and sorted(traces[0]["x"]) == sorted(j["tuned_params"] for j in jobs.values())
    _shot(page, "3-results", focus="results-scatter")
    # Parallel coordinates: brushing the top of the tuned-parameters axis (full fine-tuning's
    # count) takes attn_only out of the results table.
    page.frame_locator(".st-key-results-parcoords iframe").locator(".parcoords").first.wait_for(
        state="attached", timeout=UI_TIMEOUT_MS
    )
    brush(page, "tuned params", 0.25, -0.1)

    def brushed() -> set[str] | None:
        _no_exception(page)
        shown = {r.get("strategy") for r in _grid(page, "results-table")}
        return shown if shown and None not in shown and shown != set(rows) else None

    assert _poll(brushed, 30, 0.5, "brushing the parallel coordinates kept the table") == {"full"}


def _heatmap_cells(page: Any, key: str = "angles-unit-heatmap") -> dict[str, float]:
    """A unit heatmap as {unit name: value}, read from the Plotly figure in the page."""
    traces = _plotly_traces(page, key)
    assert traces, f"no heatmap {key} on the page"
    heat = next(t for t in traces if t["type"] == "heatmap")
    cells = {}
    for row, label in enumerate(heat["y"]):
        block = int(re.search(r"(\d+)$", str(label)).group(1))
        for col, kind in enumerate(heat["x"]):
            value = heat["z"][row][col]
            cells[f"{kind}.{block}"] = math.nan if value is None else float(value)
    return cells


def _check_angles(page: Any, lab: LabProcess, jobs: dict) -> None:
    _open(page, lab, "/angles", ".st-key-angles-unit-heatmap .js-plotly-plot")
    expected = {}
    for name in STRATEGIES:
        angles = AnglesPublic.model_validate(_api(lab, f"/api/v1/jobs/{jobs[name]['id']}/angles"))
        assert angles.final and angles.final.units, f"job {jobs[name]['id']} recorded no angles"
        assert angles.final.tensors, "the API returns the tensors' rows too"
        expected[name] = {row.name: row.angle_deg for row in angles.final.units}

    # Full fine-tuning is shown first: every unit moved.
    selected = page.locator(".st-key-angles-job [role='combobox']").input_value()
    assert f"#{jobs['full']['id']} " in selected, selected
    cells = _heatmap_cells(page)
    assert cells.keys() == expected["full"].keys()
    for unit, degrees in expected["full"].items():
        assert cells[unit] == pytest.approx(degrees, rel=1e-9), unit
        assert 0.0 < cells[unit] < 180.0, unit
    _shot(page, "4-angles")

    # attn_only: the FFN units were frozen, so their angle is exactly zero.
    _choose(page, "angles-job", f"#{jobs['attn_only']['id']} ")
    _poll(
        lambda: _heatmap_cells(page).get("FFN.0") == 0.0,
        30,
        0.5,
        "the heatmap did not switch to the attn_only job",
    )
    cells = _heatmap_cells(page)
    for unit, degrees in expected["attn_only"].items():
        assert cells[unit] == pytest.approx(degrees, rel=1e-9, abs=1e-12), unit
        assert (cells[unit] > 0.0) == unit.startswith("ATTN."), (unit, cells[unit])


def _rank_by_gradient_norm(page: Any, lab: LabProcess) -> None:
    """A non-angle criterion: a rank job started from the Angles page, its scores shown."""
    _choose(page, "angles-criterion", "gradient_norm")
    _button(page, "launch-rank").wait_for(timeout=UI_TIMEOUT_MS)
    _choose(page, "rank-model", MODEL)
    _choose(page, "rank-dataset", DATASET)
    _set_number(page, "rank-gradient_norm-batches", "2")
    _button(page, "launch-rank").click()
    _wait_for(page, "text=/Rank job \\d+ .* started: gradient_norm/", "the rank job confirmation")
    ranks = _jobs(lab, "rank")
    assert len(ranks) == 1, ranks
    rank = ranks[0]
    assert rank["config"]["criterion"] == "gradient_norm" and rank["config"]["model"] == MODEL
    assert rank["config"]["params"]["batches"] == 2

    def done() -> dict | None:
        job = _api(lab, f"/api/v1/jobs/{rank['id']}")
        if job["status"] in ("failed", "cancelled"):
            pytest.fail(f"the rank job {job['status']}: {job.get('error')}")
        return job if job["status"] == "succeeded" else None

    job = _poll(done, SOUP_TIMEOUT_S, 1, f"the rank job did not finish in {SOUP_TIMEOUT_S} s")
    expected = {u["name"]: u["score"] for u in job["result"]["units"]}
    assert expected and all(score >= 0 for score in expected.values()), expected
    # The page redraws once the job is done (its progress fragment stops polling).
    _wait_for(page, ".st-key-angles-score-heatmap .js-plotly-plot", "the score heatmap")
    cells = _heatmap_cells(page, "angles-score-heatmap")
    shown = {u: v for u, v in cells.items() if not math.isnan(v)}
    assert shown.keys() == expected.keys()
    for unit, score in expected.items():
        assert shown[unit] == pytest.approx(score, rel=1e-9), unit
    _shot(page, "4b-gradient-norm", focus="angles-score-heatmap")


def _build_soup(page: Any, lab: LabProcess, jobs: dict) -> None:
    _open(page, lab, "/soups", ".st-key-soup-ingredients [role='combobox']")
    for name in STRATEGIES:
        page.locator(".st-key-soup-ingredients [role='combobox']").click()
        page.get_by_role("option").filter(has_text=f"#{jobs[name]['id']} ").first.click()
        page.keyboard.press("Escape")
    ties = page.locator(".st-key-soup-method").get_by_text("ties", exact=True)
    ties.click()
    button = _button(page, "submit-soup")
    _poll(button.is_enabled, 15, 0.3, "the Build soup button stayed disabled")
    button.click()
    _wait_for(page, "text=/Soup job \\d+ .* created from 2 ingredients/", "the soup confirmation")
    soups = _jobs(lab, "soup")
    assert len(soups) == 1, soups
    soup = soups[0]
    assert soup["config"]["method"] == "ties"
    assert sorted(soup["config"]["ingredients"]) == sorted(j["id"] for j in jobs.values())

    def done() -> bool:
        job = _api(lab, f"/api/v1/jobs/{soup['id']}")
        if job["status"] in ("failed", "cancelled"):
            pytest.fail(f"the soup job {job['status']}: {job.get('error')}")
        return job["status"] == "succeeded"

    _poll(done, SOUP_TIMEOUT_S, 1, f"the soup did not finish within {SOUP_TIMEOUT_S} s")
    # The page shows the soup against its ingredients once the job has succeeded.
    _open(page, lab, "/soups", ".st-key-soup-comparison .js-plotly-plot")
    recipe = _api(lab, f"/api/v1/soups/{soup['id']}")
    assert recipe["method"] == "ties" and recipe["status"] == "succeeded"
    assert sorted(recipe["ingredients"]) == sorted(j["id"] for j in jobs.values())
    assert recipe["score_in"] is not None and 0.0 <= recipe["score_in"] <= 1.0
    bars = page.evaluate(
        """() => document.querySelector('.st-key-soup-comparison .js-plotly-plot')
                 .data.map(t => ({name: t.name, y: t.y}))"""
    )
    soup_bar = next((b for b in bars if "soup" in b["name"]), None)
    assert soup_bar, f"no soup bar in the comparison chart: {bars}"
    assert soup_bar["y"][0] == pytest.approx(recipe["score_in"], abs=1e-9), (bars, recipe)
    _shot(page, "5-soups", focus="soup-comparison")
    # TIES's per-unit weights (the share of the elected sign kept) as a heatmap of units by
    # ingredients: attn_only tuned no FFN unit, so its FFN cells are blank.
    assert recipe["mixing"].get("units"), recipe["mixing"]
    heat = next(t for t in _plotly_traces(page, "soup-mixing") if t["type"] == "heatmap")
    column = {str(x): i for i, x in enumerate(heat["x"])}
    rows = {str(y): i for i, y in enumerate(heat["y"])}
    attn_only = f"job {jobs['attn_only']['id']}"
    ffn = [r for r in rows if r.startswith("FFN")]
    assert ffn and all(heat["z"][rows[r]][column[attn_only]] is None for r in ffn), heat

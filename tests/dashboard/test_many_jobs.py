"""Pages stay responsive with a few hundred jobs (paginated reads, cached fetches)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pft.strategies import MANUAL_STRATEGIES
from tests.dashboard.conftest import (
    Backend,
    finish_job,
    forget_caches,
    point_dashboard_at,
    running_backend,
    submit_experiment,
)
from tests.dashboard.test_pages import assert_clean, frame, page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
STRATEGIES = ["full", "linear_probe", *MANUAL_STRATEGIES]
SEEDS = list(range(30))  # 10 strategies x 30 seeds = 300 jobs
FINISHED = 60
BUDGET_S = 5.0  # one full page run, cold caches, on a busy 2-core machine


@pytest.fixture(scope="module")
def busy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Backend, dict]]:
    with running_backend(tmp_path_factory.mktemp("pft-dashboard-busy")) as b:
        created = submit_experiment(b, [{"name": s} for s in STRATEGIES], seeds=SEEDS)
        for j in created["jobs"][:FINISHED]:
            finish_job(b, j["id"], test_acc=0.5 + 0.001 * j["id"], epochs=1)
        yield b, created


@pytest.mark.parametrize("name", ["jobs", "results", "angles", "soups", "new_experiment"])
def test_page_renders_fast_with_300_jobs(name, busy_lab, monkeypatch):
    backend, created = busy_lab
    point_dashboard_at(backend, monkeypatch)
    try:
        start = time.perf_counter()
        at = page(name).run(timeout=60)
        elapsed = time.perf_counter() - start
        assert_clean(at, backend)
        assert not at.error, [e.value for e in at.error]
        print(f"{name}: {elapsed:.2f}s with {len(created['jobs'])} jobs")
        assert elapsed < BUDGET_S
        if name == "jobs":
            assert len(frame(at, "jobs-table")) == 50  # one page of the default size
            assert any("300 job(s) · page 1 of 6" in c.value for c in at.caption)
    finally:
        forget_caches()

"""Pages work with a few hundred jobs (paginated reads, cached fetches). How fast they render is
measured by the page-render benchmark (`benchmarks/`), not asserted here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dashboard.conftest import (
    Backend,
    Engine,
    api,
    forget_caches,
    point_dashboard_at,
    running_backend,
    submit_experiment,
)
from tests.dashboard.test_pages import assert_clean, frame, page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
# 10 parameter-free strategies x 30 seeds = 300 jobs, in two experiments (an experiment holds
# at most PFT_MAX_JOBS_PER_EXPERIMENT = 256 jobs)
SEED_SETS = [list(range(15)), list(range(15, 30))]
FINISHED = 60


@pytest.fixture(scope="module")
def busy_lab(
    tmp_path_factory: pytest.TempPathFactory, engine: Engine
) -> Iterator[tuple[Backend, dict]]:
    with running_backend(tmp_path_factory.mktemp("pft-dashboard-busy")) as b:
        names = [s["name"] for s in api(b, "/catalog/strategies") if not s["params"]]
        experiments = [
            submit_experiment(b, [{"name": n} for n in names], seeds=seeds) for seeds in SEED_SETS
        ]
        created = {"jobs": [j for e in experiments for j in e["jobs"]]}
        jobs = created["jobs"][:FINISHED]
        run = engine.finish(b, jobs[0]["id"])  # one real run, replayed into the others
        for j in jobs[1:]:
            engine.finish(b, j["id"], replay=run)
        yield b, created


@pytest.mark.parametrize("name", ["jobs", "results", "angles", "soups", "new_experiment"])
def test_page_renders_with_300_jobs(name, busy_lab, monkeypatch):
    backend, created = busy_lab
    assert len(created["jobs"]) == 300
    point_dashboard_at(backend, monkeypatch)
    try:
        at = page(name).run(timeout=120)
        assert_clean(at, backend)
        assert not at.error, [e.value for e in at.error]
        if name == "jobs":
            assert len(frame(at, "jobs-table")) == 50  # one page of the default size
            assert any("300 job(s) · page 1 of 6" in c.value for c in at.caption)
    finally:
        forget_caches()

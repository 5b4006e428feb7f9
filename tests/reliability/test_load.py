"""Load: a burst of concurrent experiment submissions, and the Jobs page with 1,000 jobs.

A real uvicorn (the lab's API, its reconciler thread off) on SQLite and the real Redis (database
12, a queue of its own). 100 clients submit an experiment of 4 jobs each at once while a reader
polls the job list; every job must be persisted once and enqueued once. This CPU cannot train
400 jobs in a test, so all but four are then cancelled and the reconciler sends those four, which
a real worker runs to the end (showing the burst's jobs are runnable). The dashboard's Jobs page
runs under Streamlit's `AppTest` against the real API with 1,000 jobs in the database; its render
time is a benchmark (`benchmarks/page_render.py`), printed here, never asserted.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend import crud
from backend.enqueue import broker_job_ids
from backend.reconciler import reconcile
from contract.vocab import JobStatus
from tests.dashboard.conftest import Backend, forget_caches, point_dashboard_at
from tests.dashboard.test_pages import frame, page
from tests.reliability.conftest import REDIS_URL
from tests.worker.conftest import FINAL, Lab, make_lab, wait_for

pytestmark = [pytest.mark.slow]

CLIENTS = 100
STRATEGIES = ("full", "attn_only", "ffn_only", "linear_probe")  # 4 jobs per experiment
RUN = 4  # jobs of the burst actually trained here


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:  # noqa: ANN001
    """A lab whose API sends every job once and only once: its reconciler is off."""
    with make_lab(tmp_path, REDIS_URL, reconcile_interval_s=0) as the_lab:
        yield the_lab


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _experiment(i: int) -> dict:
    return {
        "name": f"burst-{i}",
        "model": "pft/vit-micro",
        "dataset": "synthetic",
        "pretrained": False,
        "strategies": [{"name": s} for s in STRATEGIES],
        "seeds": [i],
        "hparams": {"epochs": 1, "batch_size": 16},
    }


@pytest.mark.timeout(300)
def test_100_concurrent_submissions_persist_and_enqueue_every_job_once(lab: Lab):
    api = lab.api
    with api.client() as c:  # the first request pays for imports and the unit map cache
        assert c.get("/catalog/strategies").status_code == 200

    submit_s: list[float] = []
    read_s: list[float] = []
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def submit(i: int) -> dict:
        with api.client(timeout=60) as c:
            start = time.perf_counter()
            r = c.post("/experiments", json=_experiment(i))
            submit_s.append(time.perf_counter() - start)
        statuses[r.status_code] += 1
        return r.json()

    def read() -> None:
        with api.client(timeout=60) as c:
            while not stop.is_set():
                start = time.perf_counter()
                assert c.get("/jobs", params={"limit": 50}).status_code == 200
                read_s.append(time.perf_counter() - start)
                time.sleep(0.05)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(submit, range(CLIENTS)))
    burst_s = time.perf_counter() - started
    stop.set()
    reader.join(30)
    assert statuses == {201: CLIENTS}, (statuses, answers[:3])

    job_ids = [j["id"] for a in answers for j in a["jobs"]]
    assert len(job_ids) == len(set(job_ids)) == CLIENTS * len(STRATEGIES)
    with lab.session() as s:
        jobs, total = crud.list_jobs(s, limit=1000, offset=0)
        experiments, n_experiments = crud.list_experiments(s, limit=1000, offset=0)
    assert total == CLIENTS * len(STRATEGIES) and n_experiments == CLIENTS
    assert sorted(j.id for j in jobs) == sorted(job_ids)
    # exactly one job per (experiment, strategy), each with its experiment's seed
    seeds = {e.id: e.config["seeds"][0] for e in experiments}
    cells = Counter((j.experiment_id, j.strategy, j.seed) for j in jobs)
    assert set(cells.values()) == {1} and len(cells) == total
    assert all(j.seed == seeds[j.experiment_id] for j in jobs)
    assert {j.status for j in jobs} == {JobStatus.QUEUED}

    # every job reaches the broker once (the API sends them right after answering)
    wait_for(lambda: lab.queue_length() >= total, 60, "all jobs to reach the queue")
    assert lab.queue_length() == total
    assert broker_job_ids(settings=lab.settings) == set(job_ids)

    with api.client() as c:
        listed = c.get("/jobs", params={"limit": 500}).json()
    assert listed["total"] == total

    print(
        f"burst: {CLIENTS} x POST /experiments ({total} jobs) in {burst_s:.2f} s; "
        f"POST p50 {statistics.median(submit_s) * 1000:.0f} ms, "
        f"p95 {_percentile(submit_s, 0.95) * 1000:.0f} ms, max {max(submit_s) * 1000:.0f} ms; "
        f"GET /jobs during the burst: {len(read_s)} calls, p50 "
        f"{statistics.median(read_s) * 1000:.0f} ms, p95 {_percentile(read_s, 0.95) * 1000:.0f} ms"
    )

    # Run a few of them for real: cancel the rest, drop the queue, let the reconciler resend.
    keep = sorted(job_ids)[:RUN]
    with lab.session() as s:
        for job_id in sorted(job_ids)[RUN:]:
            assert crud.request_cancel(s, job_id=job_id) == JobStatus.CANCELLED
    lab.redis().delete(lab.queue)
    with lab.session() as s:
        assert sorted(reconcile(s, settings=lab.settings).enqueued) == keep
    lab.start_worker()
    for job_id in keep:
        job = lab.wait_status(job_id, FINAL, 180)
        assert job.status == JobStatus.SUCCEEDED and job.attempts == 1, job.error


JOBS = 1000


@pytest.mark.timeout(240)
def test_jobs_page_renders_1000_jobs(lab: Lab, monkeypatch):
    body = _experiment(0)
    api = lab.api
    with api.client() as c:  # 1,000 jobs through the API: 10 experiments x 4 x 25 seeds
        for i in range(JOBS // 100):
            r = c.post("/experiments", json={**body, "seeds": list(range(i * 25, i * 25 + 25))})
            assert r.status_code == 201, r.text
        assert c.get("/jobs").json()["total"] == JOBS
    lab.redis().delete(lab.queue)  # no worker here; the queue is not what is measured
    point_dashboard_at(
        Backend(api.url, api.token, lab.data, lab.settings.db_url, lab.queue),
        monkeypatch,
    )
    try:
        page("jobs").run(timeout=60)  # warm-up: imports and Streamlit's first script run
        times = []
        for _ in range(3):
            forget_caches()  # every run fetches from the API again
            start = time.perf_counter()
            at = page("jobs").run(timeout=60)
            times.append(time.perf_counter() - start)
            assert not at.exception and not at.error, [e.value for e in at.error]
            assert len(frame(at, "jobs-table")) == 50
            assert any(f"{JOBS} job(s)" in c.value for c in at.caption)
    finally:
        forget_caches()
    print(f"Jobs page with {JOBS} jobs, cold caches: " + ", ".join(f"{t:.2f} s" for t in times))

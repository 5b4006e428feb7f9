"""Dashboard page-render benchmark: every page of the dashboard against a lab with many jobs.

Why a benchmark and not a test: a wall-time budget in the test suite measures the machine's
load as much as the page (issue 12); the figures belong here, with the machine they came from.

Starts what the dashboard talks to, for real: a private Redis (`lab.redis_server`) and the API
(`pft api`) on a free port with SQLite in a temporary data folder. Submits one experiment of
``--strategies`` parameter-free strategies x ``--seeds`` seeds (default 10 x 30 = 300 jobs)
through ``POST /experiments`` and plays the worker for the first ``--finished`` of them through
the worker routes (claim, then one finish report with per-epoch metrics and full angle rows),
exactly as `worker/` reports a run. Then renders each page of ``dashboard/app_pages/`` with
Streamlit's AppTest in this process: cold (the dashboard's caches cleared first) and warm (right
after, caches filled), ``--repeat`` times, and prints per page the best and median wall time,
the dashboard's CPU time (this process) and the API's CPU time (from /proc) per render.

    .venv/bin/python benchmarks/page_render.py 2>/dev/null   # stderr: Streamlit's bare-mode
    .venv/bin/python benchmarks/page_render.py --seeds 10 --finished 20 --repeat 5   # warnings
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from contract.api import (
    AngleRow,
    Claim,
    EpochRecord,
    ExperimentCreated,
    FinishReport,
    UnitsPreview,
)
from contract.vocab import API_PREFIX, WORKER_ROUTES, AngleScope, JobStatus
from lab.redis_server import start_redis

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "dashboard" / "app_pages"
MODEL, DATASET, NUM_CLASSES = "pft/vit-micro", "synthetic", 10
TOKEN, WORKER_TOKEN = "bench-user-token", "bench-worker-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_api(data_dir: Path, broker_url: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        "PFT_DATA_DIR": str(data_dir),
        "PFT_API_TOKEN": TOKEN,
        "PFT_WORKER_TOKEN": WORKER_TOKEN,
        "PFT_BROKER_URL": broker_url,
        "PFT_QUEUE": "pft-bench-pages",  # nobody consumes it: the jobs stay as this script sets
        "PFT_RECONCILE_INTERVAL_S": "0",
    }
    env.pop("PFT_DATABASE_URL", None)
    pft = Path(sys.executable).with_name("pft")
    log = (data_dir / "api.log").open("w")
    proc = subprocess.Popen(
        [str(pft), "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + f"{API_PREFIX}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API did not start:\n" + (data_dir / "api.log").read_text()[-3000:])


def _angle_rows(preview: UnitsPreview, scale: float) -> list[AngleRow]:
    """Full angle rows (units and their tensors) with distinct, depth-increasing values."""
    rows = []
    for i, unit in enumerate(preview.unit_map.units):
        angle = scale * (unit.block * 10.0 + i % 2 + 1.0)
        common = {"unit": unit.name, "group": unit.group, "block": unit.block}
        rows.append(
            AngleRow(
                scope=AngleScope.UNIT,
                name=unit.name,
                angle_deg=angle,
                rel_change=angle / 90,
                **common,
            )
        )
        for j, tensor in enumerate(unit.tensors):
            part = tensor.split(".")[-2] if "." in tensor else None
            rows.append(
                AngleRow(
                    scope=AngleScope.TENSOR,
                    name=tensor,
                    angle_deg=angle + 0.1 * j,
                    rel_change=(angle + 0.1 * j) / 90,
                    part=part,
                    **common,
                )
            )
    return rows


def _finish(worker: httpx.Client, job_id: int, preview: UnitsPreview, epochs: int) -> None:
    """Plays the worker for one job: claim, then one finish report (as `worker/` sends it)."""
    claimed = worker.post(f"{WORKER_ROUTES}/jobs/{job_id}/claim", json={"worker": "bench"})
    claimed.raise_for_status()
    claim = Claim.model_validate(claimed.json())
    test_acc = 0.5 + 0.001 * job_id
    records = []
    for epoch in range(1, epochs + 1):
        frac = epoch / epochs
        metrics = {
            "train_loss": 2.0 - frac,
            "heldout_acc": test_acc * frac - 0.01,
            "test_acc": test_acc * frac,
            "images_per_sec": 500.0,
        }
        records.append(EpochRecord(epoch=epoch, metrics=metrics, angles=_angle_rows(preview, frac)))
    report = FinishReport(
        claim=claim.claim,
        status=JobStatus.SUCCEEDED,
        result={"test_acc": test_acc, "heldout_acc": test_acc - 0.01},
        epochs=records,
        angles=_angle_rows(preview, 1.0),
    )
    done = worker.post(f"{WORKER_ROUTES}/jobs/{job_id}/finish", json=report.model_dump(mode="json"))
    done.raise_for_status()


def _populate(url: str, strategies: int, seeds: int, finished: int, epochs: int) -> int:
    user = httpx.Client(
        base_url=url + API_PREFIX, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    )
    worker = httpx.Client(
        base_url=url + API_PREFIX, headers={"Authorization": f"Bearer {WORKER_TOKEN}"}, timeout=60
    )
    with user, worker:
        units = user.get(f"/models/{MODEL}/units", params={"num_classes": NUM_CLASSES})
        units.raise_for_status()
        preview = UnitsPreview.model_validate(units.json())
        names = [s.name for s in preview.strategies][:strategies]  # parameter-free ones
        # An experiment holds at most PFT_MAX_JOBS_PER_EXPERIMENT (256) jobs: split the seeds.
        per = max(1, 256 // len(names))
        jobs = []
        for first in range(0, seeds, per):
            body = {
                "model": MODEL,
                "dataset": DATASET,
                "strategies": [{"name": n} for n in names],
                "seeds": list(range(first, min(seeds, first + per))),
                "hparams": {"epochs": epochs},
            }
            created = user.post("/experiments", json=body)
            created.raise_for_status()
            jobs += ExperimentCreated.model_validate(created.json()).jobs
        for job in jobs[:finished]:
            _finish(worker, job.id, preview, epochs)
        return len(jobs)


def _forget_caches() -> None:
    import streamlit as st

    from dashboard.config import get_settings

    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def _render(name: str, api_pid: int, *, cold: bool) -> dict[str, Any]:
    from streamlit.testing.v1 import AppTest

    if cold:
        _forget_caches()
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=300)
    wall, cpu, api = time.perf_counter(), time.process_time(), _cpu_seconds(api_pid)
    at.run()
    return {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "api_cpu": _cpu_seconds(api_pid) - api,
        "errors": [str(e.value)[:200] for e in (*at.exception, *at.error)],
    }


def _summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{min(values):6.2f} / {statistics.median(values):6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", type=int, default=10, help="parameter-free strategies")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--finished", type=int, default=60, help="jobs finished by the script")
    parser.add_argument("--epochs", type=int, default=2, help="epochs each finished job reports")
    parser.add_argument("--repeat", type=int, default=3, help="renders per page and mode")
    parser.add_argument("--pages", nargs="*", default=None, help="default: every page")
    args = parser.parse_args()
    pages = args.pages or sorted(p.stem for p in PAGES.glob("*.py") if not p.stem.startswith("_"))

    with tempfile.TemporaryDirectory(prefix="pft-bench-pages-") as tmp:
        data_dir = Path(tmp)
        redis = start_redis(data_dir)
        api, url = _start_api(data_dir, redis.url)
        try:
            started = time.perf_counter()
            jobs = _populate(url, args.strategies, args.seeds, args.finished, args.epochs)
            print(
                f"lab: {jobs} jobs ({args.finished} finished, {args.epochs} epochs each), "
                f"set up in {time.perf_counter() - started:.1f} s"
            )
            os.environ.update(PFT_API_URL=url, PFT_API_TOKEN=TOKEN, PFT_DATA_DIR=str(data_dir))
            print(
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.node()}: {os.cpu_count()} "
                f"CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
                f"python {platform.python_version()}"
            )
            print(f"best / median of {args.repeat}, seconds per render")
            print(
                f"{'page':16} {'mode':5} {'wall':>15} {'dashboard CPU':>15} {'API CPU':>15}  errors"
            )
            for name in pages:
                for cold in (True, False):
                    runs = [_render(name, api.pid, cold=cold) for _ in range(args.repeat)]
                    errors = sorted({e for r in runs for e in r["errors"]})
                    print(
                        f"{name:16} {'cold' if cold else 'warm':5} {_summary(runs, 'wall'):>15} "
                        f"{_summary(runs, 'cpu'):>15} {_summary(runs, 'api_cpu'):>15}  "
                        f"{'; '.join(errors) or '-'}"
                    )
        finally:
            api.terminate()
            try:
                api.wait(timeout=10)
            except subprocess.TimeoutExpired:
                api.kill()
            redis.stop()


if __name__ == "__main__":
    main()

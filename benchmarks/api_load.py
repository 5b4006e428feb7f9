"""API load benchmark: N concurrent clients submit jobs and poll them for T seconds.

Starts a real uvicorn (`backend.main.serve`) on a free port with SQLite in a temporary data
folder and the real Redis broker (database 13, a throw-away queue), then runs the clients in one
asyncio process and prints p50/p95/max latency per route and the error count.

    .venv/bin/python benchmarks/api_load.py --clients 20 --seconds 30

Each client loops: POST /jobs (a fine-tuning job on pft/vit-micro), then GET /jobs/{id} three
times, then GET /jobs?limit=20, pausing ``--think`` seconds after each request (0: a closed loop
that measures saturation, where latency is just clients / throughput). Target (issue 4): p95
of POST /jobs < 50 ms, zero errors. Clients and server share the machine, so the figures
include the clients' CPU use; the server's own CPU time per request is reported separately
(from /proc), which is the figure least disturbed by other load on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import redis

from contract.vocab import API_PREFIX, DEFAULT_HOST

TOKEN = "bench-token"
SUBMIT = {
    "kind": "finetune",
    "model": "pft/vit-micro",
    "dataset": "synthetic",
    "strategy": {"name": "attn_only"},
    "hparams": {"epochs": 1},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((DEFAULT_HOST, 0))
        return s.getsockname()[1]


def _start_server(
    data_dir: Path, port: int, broker: str, queue: str, workers: int
) -> subprocess.Popen:
    env = {
        **os.environ,
        "PFT_DATA_DIR": str(data_dir),
        "PFT_API_TOKEN": TOKEN,
        "PFT_BROKER_URL": broker,
        "PFT_QUEUE": queue,
        "PFT_API_WORKERS": str(workers),
        "PFT_DATABASE_URL": "",
    }
    env.pop("PFT_DATABASE_URL")
    code = f"from backend.main import serve; serve(host={DEFAULT_HOST!r}, port={port})"
    log = open(data_dir / "api.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=log)


def _wait_healthy(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API did not become healthy")


async def _client(
    http: httpx.AsyncClient,
    until: float,
    think: float,
    lat: dict[str, list[float]],
    errors: dict[str, int],
    kinds: Counter,
) -> None:
    async def call(route: str, method: str, url: str, **kw) -> httpx.Response | None:
        if think:
            await asyncio.sleep(think)
        start = time.perf_counter()
        try:
            response = await http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            errors[route] += 1
            kinds[type(exc).__name__] += 1
            return None
        lat[route].append(time.perf_counter() - start)
        if response.status_code >= 400:
            errors[route] += 1
            kinds[f"HTTP {response.status_code}"] += 1
            return None
        return response

    while time.monotonic() < until:
        created = await call("POST /jobs", "POST", "/jobs", json=SUBMIT)
        if created is None:
            continue
        job_id = created.json()["id"]
        for _ in range(3):
            await call("GET /jobs/{id}", "GET", f"/jobs/{job_id}")
        await call("GET /jobs", "GET", "/jobs", params={"limit": 20})


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += _cpu_seconds(int(child))
    return total


async def _run(base: str, clients: int, seconds: float, think: float, pid: int) -> dict:
    lat: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    kinds: Counter = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as http:
        cpu = _cpu_seconds(pid)
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(_client(http, until, think, lat, errors, kinds) for _ in range(clients))
        )
        cpu = _cpu_seconds(pid) - cpu
    routes = {}
    for route, values in sorted(lat.items()):
        routes[route] = {
            "requests": len(values),
            "errors": errors[route],
            "p50_ms": 1000 * statistics.median(values),
            "p95_ms": 1000 * _quantile(values, 0.95),
            "max_ms": 1000 * max(values),
        }
    total = sum(r["requests"] for r in routes.values())
    return {
        "clients": clients,
        "seconds": seconds,
        "think_s": think,
        "server_cpu_ms_per_request": 1000 * cpu / max(total, 1),
        "requests_per_s": total / seconds,
        "errors": sum(errors.values()),
        "error_kinds": dict(kinds),
        "routes": routes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--think", type=float, default=0.0, help="pause before each request (s)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    queue = f"pft-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="pft-api-load-") as tmp:
        port = _free_port()
        server = _start_server(Path(tmp), port, args.broker, queue, args.workers)
        base = f"http://{DEFAULT_HOST}:{port}{API_PREFIX}"
        try:
            _wait_healthy(base)
            result = asyncio.run(_run(base, args.clients, args.seconds, args.think, server.pid))
        finally:
            server.terminate()
            server.wait(10)
            redis.Redis.from_url(args.broker).delete(
                queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
            )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.clients} clients, think {args.think:g} s, {args.seconds:g} s, "
        f"{args.workers} API process(es), SQLite: "
        f"{result['requests_per_s']:.0f} requests/s, {result['errors']} errors "
        f"{result['error_kinds'] or ''}, server CPU {result['server_cpu_ms_per_request']:.2f} "
        "ms/request"
    )
    print(f"{'route':<16} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for route, r in result["routes"].items():
        print(
            f"{route:<16} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>8.1f} "
            f"{r['p95_ms']:>8.1f} {r['max_ms']:>8.1f}"
        )


if __name__ == "__main__":
    main()

"""Import-time benchmark: how long the API, the dashboard and the `pft` command take to import.

Why a benchmark and not a test: on a shared 2-core machine the import of ``backend.main`` took
1.3-1.7 s of CPU against a 1.0 s limit in the test suite (issue 12), so the figure measured the
machine's load as much as the code. The suite keeps the torch-free import check; the time goes
here, measured as a ratio against a stdlib baseline imported the same way, which cancels out
most of the machine's speed and load.

Each probe is a fresh interpreter that imports one module and reports the CPU time and wall
time of that import (not of the interpreter's start), the number of modules it loaded and
whether torch came with it. Probes are interleaved (baseline, then every module, ``--repeat``
rounds) so that a burst of load hits all of them alike.

    .venv/bin/python benchmarks/import_time.py
    .venv/bin/python benchmarks/import_time.py --repeat 9 backend.main
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The API's process, the dashboard's HTTP client and figures, and the `pft` console script.
MODULES = ("backend.main", "dashboard.client", "dashboard.charts", "lab.cli")
# A fixed set of standard-library imports: pure import work, no third-party code.
BASELINE = (
    "asyncio,decimal,email.mime.multipart,http.server,json,logging.handlers,sqlite3,"
    "urllib.request,xml.etree.ElementTree,zipfile"
)
HEAVY = ("torch", "timm", "torchvision")

PROBE = """
import json, sys, time
before = set(sys.modules)
cpu, wall = time.process_time(), time.perf_counter()
for name in sys.argv[1].split(","):
    __import__(name)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({"cpu": cpu, "wall": wall, "modules": len(set(sys.modules) - before),
                  "heavy": heavy}))
"""


def probe(modules: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, modules, ",".join(HEAVY)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"import {modules} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES))
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per module")
    parser.add_argument("--baseline", default=BASELINE, help="comma-separated stdlib modules")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {name: [] for name in ["baseline", *args.modules]}
    for _ in range(args.repeat):
        runs["baseline"].append(probe(args.baseline))
        for name in args.modules:
            runs[name].append(probe(name))

    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.node()}: {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"python {platform.python_version()}; best / median of {args.repeat} fresh interpreters"
    )
    base = min(r["cpu"] for r in runs["baseline"])
    header = f"{'import':20} {'CPU s':>15} {'wall s':>15} {'CPU / baseline':>15} {'modules':>8}"
    print(header + "  heavy")
    for name, found in runs.items():
        cpu = [r["cpu"] for r in found]
        wall = [r["wall"] for r in found]
        heavy = ",".join(found[0]["heavy"]) or "none"
        print(
            f"{name:20} {min(cpu):6.3f} / {statistics.median(cpu):6.3f} "
            f"{min(wall):6.3f} / {statistics.median(wall):6.3f} "
            f"{min(cpu) / base:15.1f} {found[0]['modules']:8d}  {heavy}"
        )


if __name__ == "__main__":
    main()

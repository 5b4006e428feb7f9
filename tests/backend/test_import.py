"""The API stays slim: no torch or timm on its import path, and it imports in under a second."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys, time
t, c = time.perf_counter(), time.process_time()
import backend.main
elapsed, cpu = time.perf_counter() - t, time.process_time() - c
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision'))
print(json.dumps({"elapsed": elapsed, "cpu": cpu, "heavy": heavy}))
"""


def _probe() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_backend_main_imports_without_torch_in_under_a_second() -> None:
    runs = [_probe() for _ in range(3)]
    assert all(r["heavy"] == [] for r in runs), runs[0]["heavy"]
    # CPU time, best of three: wall time on a 2-core machine shared with other test processes
    # measures the scheduler more than the import (it is < 1 s wall on an idle machine too).
    assert min(r["cpu"] for r in runs) < 1.0, runs

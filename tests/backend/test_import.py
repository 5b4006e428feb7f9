"""The API stays slim: no torch or timm on its import path (the import time is a benchmark,
`benchmarks/`, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import backend.main
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision'))
print(json.dumps(heavy))
"""


def test_backend_main_imports_without_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

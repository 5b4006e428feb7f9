"""The dashboard talks HTTP only: no pft, backend, worker, torch, database or broker code on its
import path (it shares only `contract` with the API)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
FORBIDDEN = (
    "torch",
    "timm",
    "sqlalchemy",
    "celery",
    "redis",
    "kombu",
    "fastapi",
    "backend",
    "worker",
    "safetensors",
    "pft",
)
MODULES = [
    "dashboard.charts",
    "dashboard.client",
    "dashboard.config",
    "dashboard.data",
    "dashboard.layout",
    "dashboard.params",
    "dashboard.shaping",
    "dashboard.soup_view",
    "dashboard.ui",
]


def test_dashboard_modules_import_without_heavy_packages():
    code = (
        "import sys, json\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} "
        f"or m in {FORBIDDEN!r})\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_no_dashboard_file_imports_a_forbidden_package():
    offenders = []
    for path in DASHBOARD.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN or name in FORBIDDEN:
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
    assert len(list(DASHBOARD.glob("app_pages/*.py"))) >= 5

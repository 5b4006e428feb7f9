"""`make up` installs what the lab needs, `make test` what the suite needs, and neither
reinstalls what the other already did (one stamp per extra). Read with ``make -n`` (dry run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _dry_run(*args: str) -> str:
    # -W pyproject.toml: as if it had just changed, so every install step shows.
    out = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_up_installs_the_lab_extra_only() -> None:
    steps = _dry_run("up")
    assert "pip install -q -e '.[lab]'" in steps
    assert "[dev]" not in steps
    assert "pft up" in steps


def test_test_installs_dev_and_counts_for_the_lab_too() -> None:
    steps = _dry_run("test")
    assert "pip install -q -e '.[dev]'" in steps
    assert "touch .venv/.installed-lab" in steps  # `make up` afterwards installs nothing


def test_the_suite_runs_to_the_end() -> None:
    # One failure must not hide the rest: no -x / --exitfirst / --maxfail on `make test`.
    pytest_line = next(line for line in _dry_run("test").splitlines() if "-m pytest" in line)
    for flag in (" -x", "--exitfirst", "--maxfail"):
        assert flag not in pytest_line, pytest_line

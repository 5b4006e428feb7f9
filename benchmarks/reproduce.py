"""The reproduction study as a benchmark script: ``python benchmarks/reproduce.py [OPTIONS]``.

A thin wrapper around ``pft reproduce`` (same options), for running it from a checkout.
"""

from __future__ import annotations

import sys

from pft.cli import reproduce as _reproduce  # noqa: F401  (registers the command)
from pft.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["reproduce", *sys.argv[1:]]))

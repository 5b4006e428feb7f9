"""Suite-wide settings, applied before any test module imports torch.

One torch (OpenMP/MKL) thread per test process: on a small shared machine two threads per
process are several times slower than one, and `make test` runs two test processes side by side
(pytest-xdist). Real worker and lab processes the tests start inherit it; a test that checks
thread handling sets its own count.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

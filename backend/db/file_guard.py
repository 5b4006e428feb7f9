"""Noticing a SQLite database file that vanished or was replaced while the API runs.

An open SQLite connection keeps using the file it opened: after ``rm lab.db`` (or a restore
that moves another file into place) the API would go on reading and writing a deleted inode,
acknowledging submissions that are lost at the next restart, and new job ids would collide
with the old artifact folders. `DatabaseFileGuard` records the file's (device, inode) when the
API starts and compares it on every write request (one ``stat``) and in ``/health``; once it
differs, or the file is gone, the API refuses every write with 503 and this message until it
is restarted (the pooled connections still point at the old file, so there is no going back).

PostgreSQL and in-memory SQLite have no file to watch: the guard is inert.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from sqlalchemy import make_url

from backend.db.session import normalise_url

log = logging.getLogger("backend.db")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and ``:memory:``."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().absolute()


class DatabaseFileGuard:
    """Compares the database file's identity with the one recorded by `arm`."""

    def __init__(self, url: str) -> None:
        self.path = sqlite_file(url)
        self._identity: tuple[int, int] | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int]:
        assert self.path is not None
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def arm(self) -> None:
        """Records the file as it is now (after the migrations created it)."""
        if self.path is not None:
            self._identity = self._stat()

    def problem(self) -> str | None:
        """None while the file is the one the API opened; else what happened (sticky)."""
        if self._identity is None or self._problem is not None:
            return self._problem
        try:
            now: tuple[int, int] | None = self._stat()
        except FileNotFoundError:
            now = None
        except OSError:
            return None  # unreadable for a moment (a permission change): not evidence
        if now == self._identity:
            return None
        what = "was deleted" if now is None else "was replaced by another file"
        with self._lock:
            if self._problem is None:
                self._problem = (
                    f"the database file {self.path} {what} while the API was running; "
                    "writes are refused so that nothing is acknowledged and lost. Restore the "
                    "file (or keep the new one) and restart the API (`pft up` / `pft api`)"
                )
                log.error("%s", self._problem)
        return self._problem

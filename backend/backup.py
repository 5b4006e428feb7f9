"""`pft backup DEST`: a consistent copy of the lab's SQLite database, safe while the lab runs.

The lab's SQLite database runs in WAL mode: committed transactions sit in ``lab.db-wal`` until
a checkpoint moves them into ``lab.db``, so a plain copy of ``lab.db`` can miss recent work, or
all of it (a clean stop can leave every row in the WAL). SQLite's online backup API
(`sqlite3.Connection.backup`) reads the database through a connection, WAL included, as one
consistent snapshot; in WAL mode it does not block the API's writes. The copy is written
beside DEST, made a single self-contained file (rollback journal, no WAL), checked with
``PRAGMA integrity_check`` and only then renamed to DEST, private to its user (0600).

PostgreSQL is backed up with its own tool: `pg_dump_command` says which command to run.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url


class BackupError(Exception):
    """The backup was not made; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class BackupReport:
    dest: Path
    size_bytes: int
    rows: dict[str, int]  # table -> rows in the copy


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError(f"{url!r} is not a database file")
    return Path(parsed.database).expanduser().resolve()


def pg_dump_command(url: str, dest: Path) -> str:
    """The ``pg_dump`` command that backs up the PostgreSQL database of ``url`` (password left
    out: give it as ``PGPASSWORD`` or in ``~/.pgpass``)."""
    parsed = make_url(url).set(drivername="postgresql")
    target = parsed._replace(password=None).render_as_string(hide_password=False)
    return f"pg_dump --format=custom --file={shlex.quote(str(dest))} {shlex.quote(target)}"


def _row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def backup_sqlite(source: Path, dest: Path, *, overwrite: bool = False) -> BackupReport:
    """Copies the SQLite database ``source`` (its WAL included) to ``dest`` and verifies the
    copy; ``dest`` may be a folder (the copy is then ``dest/<source name>``)."""
    source = Path(source).resolve()
    if not source.is_file():  # connecting would create an empty database
        raise BackupError(f"no database at {source}: is PFT_DATA_DIR the lab's data folder?")
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / source.name
    dest = dest.resolve()
    if dest == source or dest.name in (f"{source.name}-wal", f"{source.name}-shm"):
        raise BackupError(f"{dest} is the live database: back it up to another file")
    if dest.exists() and not overwrite:
        raise BackupError(f"{dest} exists: remove it or pass --force to replace it")
    if not dest.parent.is_dir():
        raise BackupError(f"no folder {dest.parent}")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # private from the start
    try:
        with closing(sqlite3.connect(source, timeout=30)) as src:
            with closing(sqlite3.connect(tmp)) as copy:
                src.backup(copy)  # one step: one consistent snapshot
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        with closing(sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)) as check:
            verdict = [r[0] for r in check.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                raise BackupError(f"the copy failed its integrity check: {'; '.join(verdict)}")
            rows = _row_counts(check)
        os.replace(tmp, dest)
    except sqlite3.Error as exc:
        raise BackupError(f"could not back up {source}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return BackupReport(dest, dest.stat().st_size, rows)

"""`pft backup`: the lab's SQLite database copied with its WAL (a copy of lab.db alone misses
committed rows), while another connection writes, then verified."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.backup import BackupError, backup_sqlite, pg_dump_command, sqlite_path
from lab.cli import app


def _jobs(path: Path) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
        return c.execute("SELECT count(*) FROM jobs").fetchone()[0]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A database in WAL mode whose committed rows are all still in lab.db-wal: the connection
    that wrote them stays open and never checkpoints (as the API leaves it)."""
    db = tmp_path / "data" / "lab.db"
    db.parent.mkdir()
    conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL)")
    conn.execute("CREATE TABLE metrics (id INTEGER PRIMARY KEY, job_id INTEGER)")
    with conn:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO jobs (kind) VALUES (?)", [("finetune",)] * 25)
        conn.executemany("INSERT INTO metrics (job_id) VALUES (?)", [(i,) for i in range(7)])
    try:
        yield db, conn
    finally:
        conn.close()


def test_a_copy_of_lab_db_alone_misses_the_wal_but_the_backup_has_it(live, tmp_path):
    db, _ = live
    assert Path(f"{db}-wal").stat().st_size > 0
    naive = tmp_path / "naive.db"
    shutil.copyfile(db, naive)  # what the docs used to say: copy lab.db
    with closing(sqlite3.connect(naive)) as c:  # the tables' creation was in the WAL too
        assert c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0

    report = backup_sqlite(db, tmp_path / "backup.db")
    assert report.dest == (tmp_path / "backup.db").resolve()
    assert report.rows == {"jobs": 25, "metrics": 7}
    assert _jobs(report.dest) == 25
    assert not Path(f"{report.dest}-wal").exists()  # one self-contained file
    assert stat.S_IMODE(report.dest.stat().st_mode) == 0o600
    with closing(sqlite3.connect(report.dest)) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_backup_runs_while_another_connection_writes(live, tmp_path):
    db, writer = live
    stop = threading.Event()
    written = [25]

    def write() -> None:
        while not stop.is_set():
            with writer:
                writer.execute("BEGIN")
                writer.execute("INSERT INTO jobs (kind) VALUES ('soup')")
            written.append(written[-1] + 1)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while written[-1] < 60:  # the writer is well under way
            stop.wait(0.01)
        before = written[-1]
        reports = [backup_sqlite(db, tmp_path / f"b{i}.db") for i in range(3)]
    finally:
        stop.set()
        thread.join()
    for report in reports:
        assert before <= report.rows["jobs"] <= written[-1]
        assert _jobs(report.dest) == report.rows["jobs"]
    assert _jobs(db) == written[-1]  # the writer lost nothing


def test_refusals_name_the_problem(live, tmp_path):
    db, _ = live
    with pytest.raises(BackupError, match="is the live database"):
        backup_sqlite(db, db)
    with pytest.raises(BackupError, match="no database at"):
        backup_sqlite(tmp_path / "nothing.db", tmp_path / "x.db")
    assert not (tmp_path / "nothing.db").exists()  # not created by trying
    (tmp_path / "taken.db").write_text("keep me")
    with pytest.raises(BackupError, match="exists: remove it or pass --force"):
        backup_sqlite(db, tmp_path / "taken.db")
    assert (tmp_path / "taken.db").read_text() == "keep me"
    assert backup_sqlite(db, tmp_path / "taken.db", overwrite=True).rows["jobs"] == 25
    folder = tmp_path / "backups"
    folder.mkdir()
    assert backup_sqlite(db, folder).dest == (folder / "lab.db").resolve()
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_cli_backs_up_the_labs_database(live, tmp_path, monkeypatch):
    db, _ = live
    monkeypatch.setenv("PFT_DATA_DIR", str(db.parent))
    monkeypatch.delenv("PFT_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["backup", str(tmp_path / "copy.db")])
    assert result.exit_code == 0, result.output
    assert "integrity ok; jobs: 25; rows: jobs 25, metrics 7" in result.output
    assert _jobs(tmp_path / "copy.db") == 25
    again = CliRunner().invoke(app, ["backup", str(tmp_path / "copy.db")])
    assert again.exit_code == 1 and "pass --force" in again.output


def test_postgresql_gets_the_pg_dump_command(tmp_path, monkeypatch):
    url = "postgresql+psycopg://pft:s3cret@db.example:5432/lab"
    assert sqlite_path(url) is None
    command = pg_dump_command(url, tmp_path / "lab.dump")
    assert command == (
        f"pg_dump --format=custom --file={tmp_path / 'lab.dump'} postgresql://pft@db.example:5432/lab"
    )
    monkeypatch.setenv("PFT_DATABASE_URL", url)
    result = CliRunner().invoke(app, ["backup", str(tmp_path / "lab.dump")])
    assert result.exit_code == 2
    assert "pg_dump --format=custom" in result.output and "s3cret" not in result.output
    assert not (tmp_path / "lab.dump").exists()

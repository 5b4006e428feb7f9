"""The `pft` console script: the science CLI (pft.cli) plus the lab's services.

The service commands import their packages lazily, so `pft units` never loads FastAPI or Celery.
"""

from __future__ import annotations

import typer

from contract.vocab import DEFAULT_API_PORT, DEFAULT_HOST
from pft.cli import app


@app.command()
def api(
    host: str = typer.Option(DEFAULT_HOST, help="interface to listen on"),
    port: int = typer.Option(None, help=f"port (default: PFT_API_PORT or {DEFAULT_API_PORT})"),
) -> None:
    """Run the HTTP API (uvicorn)."""
    from backend.main import serve

    serve(host=host, port=port)


@app.command()
def worker(
    concurrency: int = typer.Option(1, help="worker processes (one per device)"),
) -> None:
    """Run a Celery worker that executes queued jobs."""
    from lab.worker_command import run_worker

    run_worker(concurrency=concurrency)


@app.command()
def up() -> None:
    """Start the whole lab on this machine: Redis, API, worker and dashboard (Ctrl-C stops)."""
    from lab.launcher import up as launch

    launch()


@app.command()
def backup(
    dest: str = typer.Argument(..., help="file (or folder) to write the copy to"),
    force: bool = typer.Option(False, "--force", help="replace DEST if it exists"),
) -> None:
    """Copy the lab's SQLite database consistently (also while the lab runs), then verify it;
    for PostgreSQL, print the pg_dump command to use instead."""
    from pathlib import Path

    from backend.backup import BackupError, backup_sqlite, pg_dump_command, sqlite_path
    from backend.core.config import ApiSettings

    url = ApiSettings().db_url
    try:
        source = sqlite_path(url)
        if source is None:
            typer.echo("The lab's database is not SQLite: back it up with pg_dump, e.g.")
            typer.echo(pg_dump_command(url, Path(dest)))
            raise typer.Exit(2)
        report = backup_sqlite(source, Path(dest), overwrite=force)
    except BackupError as exc:
        typer.echo(f"pft backup: {exc}", err=True)
        raise typer.Exit(1) from None
    counts = ", ".join(f"{t} {n}" for t, n in report.rows.items())
    typer.echo(
        f"{source} -> {report.dest} ({report.size_bytes} bytes); integrity ok; "
        f"jobs: {report.rows.get('jobs', 'no jobs table')}; rows: {counts}"
    )


def main() -> None:
    app()

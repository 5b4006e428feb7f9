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
    from worker.launch import run_worker

    run_worker(concurrency=concurrency)


@app.command()
def up() -> None:
    """Start the whole lab on this machine: Redis, API, worker and dashboard (Ctrl-C stops)."""
    from lab.launcher import up as launch

    launch()


def main() -> None:
    app()

"""`pft reproduce`: the reproduction study of Ye et al. (arXiv 2312.15681) on the built-in
backbone, written up as a Markdown report with figures (see docs/REPRODUCTION.md)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from pft.cli.app import app
from pft.errors import PftError
from pft.reproduce.plan import FULL_PRESET


def _command_line(ctx: typer.Context) -> str:
    """The options given on the command line, as a ``pft reproduce ...`` line for the report."""
    parts = ["pft reproduce"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        # --report-only rewrites the same report; the command to show is the one that trains.
        if getattr(source, "name", None) != "COMMANDLINE" or param.name == "report_only":
            continue
        value = ctx.params[param.name]
        if isinstance(value, bool):
            flags = param.opts if value else param.secondary_opts
            parts += flags[:1]
        else:
            for v in value if isinstance(value, list | tuple) else [value]:
                parts += [param.opts[0], shlex.quote(str(v))]
    return " ".join(parts)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def reproduce(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="the CI preset: minutes, test model"),
    preset: str = typer.Option(
        FULL_PRESET, help="quick, reduced (~45 min CPU) or full (~2.3 h CPU)"
    ),
    out: Path = typer.Option(None, help="study folder (default: $PFT_DATA_DIR/reproduce/PRESET)"),
    seeds: int = typer.Option(None, help="seeds per strategy (overrides the preset)"),
    epochs: int = typer.Option(None, help="epochs per run on every target (overrides)"),
    dataset: list[str] = typer.Option(None, "--dataset", help="target (repeatable; overrides)"),
    margin: float = typer.Option(
        None, help="equivalence margin in accuracy points (default: the preset's, 1 point)"
    ),
    report: Path = typer.Option(None, help="report path (default: OUT/REPRODUCTION.md)"),
    figures: Path = typer.Option(
        None, help="figure folder (default: beside the report, img/reproduction)"
    ),
    report_only: bool = typer.Option(
        False, "--report-only", help="write the report from finished runs; train nothing"
    ),
    threads: int = typer.Option(None, help="torch CPU threads (1 is fastest on a busy machine)"),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    workers: int = typer.Option(
        1, help="runs trained at once, each in a process of its own (e.g. one per CPU core)"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
) -> None:
    """Run (or resume) the study, then write the report: three claims, tables, figures.

    Every run has its own folder under OUT; re-running skips finished runs and resumes an
    interrupted one from its last epoch.
    """
    from pft.paths import data_dir
    from pft.reproduce.plan import customise, get_preset

    try:
        chosen = customise(
            get_preset("quick" if quick else preset),
            seeds=seeds,
            epochs=epochs,
            datasets=list(dataset) if dataset else None,
            margin=margin / 100 if margin is not None else None,
        )
    except PftError as exc:
        _fail(str(exc))
    if workers < 1:
        _fail(f"--workers must be an integer >= 1, got {workers}")
    if threads is not None:
        if threads < 1:
            _fail(f"--threads must be an integer >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    root = out or data_dir() / "reproduce" / chosen.name.split(",")[0]
    from pft.reproduce.pipeline import reproduce as run

    command = _command_line(ctx)
    try:
        result = run(
            chosen,
            root,
            report=report,
            figures=figures,
            run=not report_only,
            device=device,
            progress=progress,
            command=command,
            workers=workers,
        )
    except PftError as exc:
        _fail(str(exc))
    typer.echo(f"report: {result['report']}")
    for dataset_name, figs in result["figures"].items():
        for kind, path in figs.items():
            typer.echo(f"figure ({dataset_name}, {kind}): {path}")

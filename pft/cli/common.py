"""Helpers shared by the CLI's command modules: errors, tables, common options."""

from __future__ import annotations

import json

import typer

OVERRIDE = typer.Option(None, "--override", help="timm keyword override KEY=VALUE (repeatable)")
JSON = typer.Option(False, "--json", help="print the stable JSON contract")
SHIFT = typer.Option(None, "--shift", help="shift NAME or NAME:SEVERITY (repeatable), e.g. blur:3")
DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if available)")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def parse_overrides(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--override takes KEY=VALUE, got {pair!r}")
        out[key] = json.loads(value) if value.replace(".", "", 1).isdigit() else value
    return out


def print_table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        cells = zip(row, widths, strict=True)
        typer.echo("  ".join(_cell(x, w) for x, w in cells).rstrip())


def _cell(value: object, width: int) -> str:
    text = str(value)
    numeric = text.replace(",", "").replace(".", "").replace("%", "").replace("e-", "").isdigit()
    return text.rjust(width) if numeric else text.ljust(width)

"""`pft models PATTERN [--check] [--json]`: which timm models pft maps, before queueing."""

from __future__ import annotations

import json

import typer

from pft.cli.app import app
from pft.cli.common import JSON, fail, print_table


@app.command()
def models(
    pattern: str = typer.Argument(..., help="shell-style timm name pattern, e.g. 'convnext*'"),
    check: bool = typer.Option(
        False, "--check", help="build each on the meta device: mapped or refused and why"
    ),
    num_classes: int = typer.Option(100, "--num-classes", "-n", help="classes of the new head"),
    limit: int = typer.Option(200, "--limit", help="check at most this many models"),
    as_json: bool = JSON,
) -> None:
    """timm models matching PATTERN; with --check, for each: mapped or refused (and why),
    depth, groups and tuned parameters per strategy (suggested K), computed on the meta
    device without weights."""
    from pft.model_factory import check_model
    from pft.model_picker import matching_models

    names = matching_models(pattern)
    if not names:
        fail(f"no timm model matches {pattern!r}")
    if not check:
        if as_json:
            typer.echo(json.dumps({"pattern": pattern, "models": names}, indent=2))
        else:
            typer.echo("\n".join(names))
        return
    if len(names) > limit:
        fail(f"{len(names)} models match {pattern!r}; narrow the pattern or raise --limit")
    rows = [check_model(n, num_classes) for n in names]
    if as_json:
        data = {"pattern": pattern, "num_classes": num_classes, "models": rows}
        typer.echo(json.dumps(data, indent=2))
        return
    table = []
    for r in rows:
        if r["mapped"]:
            tuned = r["tuned_params"]
            groups = ", ".join(f"{g}:{n}" for g, n in r["groups"].items())
            lp = min(tuned.values())
            table.append(
                [r["model"], "mapped", r["depth"], groups, f"{r['total_params']:,}", f"{lp:,}"]
            )
        else:
            table.append([r["model"], "refused", "", r["reason"], "", ""])
    print_table(table, ["model", "status", "depth", "groups / reason", "params", "head"])
    mapped = sum(r["mapped"] for r in rows)
    typer.echo(f"{mapped} mapped, {len(rows) - mapped} refused")

"""`pft soup METHOD`: one subcommand per method of the merge registry (`pft.soups.registry`),
all built by the one soup pipeline (`pft.soups.pipeline.make_soup`). Method parameters are
``--param KEY=VALUE``; a method's trace (greedy's decisions) and mixing weights (a scale chosen
on held-out, per-unit weights) are printed after the soup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pft.cli.app import app
from pft.cli.common import DEVICE, JSON, SHIFT, fail, print_table
from pft.errors import PftError
from pft.soups.registry import MERGE_METHODS, MergeMethod

soup_app = typer.Typer(help="Build model soups from delta checkpoints.", no_args_is_help=True)
app.add_typer(soup_app, name="soup")

PARAM = typer.Option(None, "--param", help="method parameter KEY=VALUE (repeatable)")


def _method_params(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--param takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _print_mixing(mixing: dict[str, Any]) -> None:
    if mixing.get("grid"):
        rows = [[f"{g['scale']:g}", f"{g['heldout']:.4f}"] for g in mixing["grid"]]
        print_table(rows, ["scale", "soup (held-out)"])
    if mixing.get("units"):
        weight = mixing["weight"]
        rows = [
            [group, f"{row['weight']:.4f}", row["ingredients"]]
            for group, row in mixing["units"].items()
        ]
        print_table(rows, ["unit", weight, "ingredients"])
    if mixing.get("grid"):
        typer.echo(f"scale {mixing['scale']:g} chosen on held-out")


def _print(method: MergeMethod, checkpoints: list[Path], result: dict, out: Path | None) -> None:
    _print_mixing(result.get("mixing") or {})
    if result["trace"]:
        rows = [
            [
                t["order"],
                str(checkpoints[t["ingredient"]]),
                f"{t['individual_score']:.4f}",
                f"{t['candidate_score']:.4f}",
                "added" if t["accepted"] else "skipped",
            ]
            for t in result["trace"]
        ]
        print_table(rows, ["step", "ingredient", "alone (held-out)", "soup (held-out)", ""])
    size = f"{len(result['selected'])} / {len(checkpoints)}"
    if "test_acc" in result:
        typer.echo(
            f"{method.name} soup of {size}: held-out acc {result['heldout_acc']:.4f}, "
            f"test acc {result['test_acc']:.4f}"
        )
        for name, m in result["shifts"].items():
            typer.echo(f"  shift {name}: acc {m['acc']:.4f}")
    if out:
        typer.echo(f"{method.name} soup of {size} checkpoints written to {out}")


def _command(method: MergeMethod):  # noqa: ANN202 (a typer command)
    def command(
        checkpoints: list[Path] = typer.Argument(..., help="delta checkpoints of one base model"),
        out: Path = typer.Option(None, "--out", help="write the soup as a delta checkpoint"),
        dataset: str = typer.Option(
            None, "--dataset", help="evaluate on it (default: the checkpoints' dataset)"
        ),
        shift: list[str] = SHIFT,
        param: list[str] = PARAM,
        device: str = DEVICE,
        as_json: bool = JSON,
    ) -> None:
        from pft.soups.pipeline import make_soup

        params = _method_params(param)
        try:
            scores = method.heldout_candidates(len(checkpoints), method.validate(params)) > 0
        except PftError as exc:
            fail(str(exc))
        # Methods that score on held-out read the dataset anyway and evaluate; the others
        # only average, unless a dataset or a shift asks for an evaluation.
        evaluate = scores or dataset is not None or bool(shift)
        if out is None and not evaluate:
            fail(f"give --out for the {method.name} soup (or --dataset to evaluate it)")
        try:
            result = make_soup(
                method.name,
                checkpoints,
                params=params,
                dataset=dataset,
                shifts=list(shift or []),
                out=out,
                device=device,
                evaluate=evaluate,
            )
        except PftError as exc:
            fail(str(exc))
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        _print(method, checkpoints, result, out)

    command.__doc__ = method.description
    return command


for _method in MERGE_METHODS.values():
    soup_app.command(_method.name)(_command(_method))

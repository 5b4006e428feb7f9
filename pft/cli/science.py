"""CLI commands on names and weights: units, strategies, angles, uniform and masked soups."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pft.cli.app import app
from pft.cli.common import JSON, OVERRIDE, fail, parse_overrides, print_table
from pft.errors import PftError

soup_app = typer.Typer(help="Build model soups from delta checkpoints.", no_args_is_help=True)
app.add_typer(soup_app, name="soup")


def _unit_map(model: str, num_classes: int, override: list[str] | None):
    from pft.model_catalog import unit_map_for

    try:
        return unit_map_for(model, num_classes, parse_overrides(override), compute=True)
    except PftError as exc:
        fail(str(exc))


NUM_CLASSES = typer.Option(100, "--num-classes", "-n", help="classes of the new head")


@app.command()
def units(
    model: str, num_classes: int = NUM_CLASSES, override: list[str] = OVERRIDE, as_json: bool = JSON
) -> None:
    """The unit map of MODEL: ATTN/FFN units, their groups and parameter counts."""
    um = _unit_map(model, num_classes, override)
    data = um.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(
        f"{model}: {um.total_params:,} params, head {um.head_params:,}, "
        f"{len(um.units)} units in groups {', '.join(um.groups)}"
    )
    print_table(
        [[u.name, u.group, u.block, f"{u.params:,}", len(u.tensors)] for u in um.units],
        ["unit", "group", "block", "params", "tensors"],
    )


@app.command()
def strategies(
    model: str,
    num_classes: int = NUM_CLASSES,
    override: list[str] = OVERRIDE,
    k: int = typer.Option(None, help="angle_topk K per group (default: half the smallest group)"),
    units: list[str] = typer.Option(None, "--unit", help="units for `custom` (repeatable)"),
    as_json: bool = JSON,
) -> None:
    """Every built-in strategy resolved on MODEL: tuned units and tuned parameters.

    angle_topk's count does not depend on the angles (units of a group have one shape), so it is
    shown for any ranking; custom is shown when --unit is given.
    """
    from pft.strategies import STRATEGIES, resolve_strategy

    um = _unit_map(model, num_classes, override)
    smallest = min(len(g) for g in um.groups.values())
    k = k if k is not None else max(1, smallest // 2)
    rows = []
    for name, strategy in STRATEGIES.items():
        params: dict = {}
        if name == "angle_topk":
            params = {"k": k, "order": "largest", "angles": dict.fromkeys(um.unit_names, 0.0)}
        elif name == "custom":
            if not units:
                continue
            params = {"units": list(units)}
        try:
            rows.append(resolve_strategy(um, name, **params).to_dict(strategy.description))
        except PftError as exc:
            fail(str(exc))
    if as_json:
        typer.echo(
            json.dumps({"model": model, "num_classes": num_classes, "strategies": rows}, indent=2)
        )
        return
    print_table(
        [
            [
                r["name"],
                f"{r['tuned_params']:,}",
                f"{100 * r['tuned_fraction']:.2f}%",
                len(r["units"]),
                r["description"],
            ]
            for r in rows
        ],
        ["strategy", "tuned params", "of model", "units", "description"],
    )


@app.command()
def angles(
    pretrained: str = typer.Argument(..., help="safetensors file, or a model name"),
    finetuned: Path = typer.Argument(..., help="safetensors state dict or pft delta checkpoint"),
    pretrained_weights: Path = typer.Option(
        None, help="with a model name: load these safetensors weights instead of the hub's"
    ),
    as_json: bool = JSON,
) -> None:
    """Fine-tuned angle of every unit (and tensor) between two checkpoints."""
    from pft.angles import compute_angles
    from pft.units import build_unit_map
    from pft.weights import open_weights, pretrained_weights_for, shape_of

    try:
        ft, meta = open_weights(finetuned)
        pre = pretrained_weights_for(pretrained, ft, pretrained_weights)
        if str(meta.get("format", "")).startswith("pft-delta"):
            ft = ft.over(pre)  # a delta holds only the tuned tensors
        # Names from both sides, so a tensor missing on either side is reported by name.
        names = list(ft) + [n for n in pre if n not in ft]
        shapes = [(n, shape_of(ft if n in ft else pre, n)) for n in names]
        head = [s for n, s in shapes if n in ("head.weight", "head.fc.weight")]
        um = build_unit_map(
            shapes,
            model=str(meta.get("base_model", pretrained)),
            num_classes=head[0][0] if head else 0,
        )
        report = compute_angles(pre, ft, um)
    except PftError as exc:
        fail(str(exc))
    data = report.to_dict(um)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    print_table(
        [[u["name"], f"{u['angle_deg']:.4f}", f"{u['rel_change']:.3e}"] for u in data["units"]],
        ["unit", "angle (deg)", "rel change"],
    )


def build_soup_file(method: str, checkpoints: list[Path], out: Path) -> dict:
    """Averages delta checkpoints into a new delta checkpoint at ``out``; returns its metadata."""
    from pft.checkpoint import base_from_meta, load_delta, same_base, save_delta
    from pft.soups import masked_soup, uniform_soup

    if len(checkpoints) < 2:
        raise PftError("a soup needs at least two checkpoints")
    metas = [load_delta(p)[1] for p in checkpoints]
    same_base(metas)
    base = {k: v.detach() for k, v in base_from_meta(metas[0]).state_dict().items()}
    deltas = (load_delta(p)[0] for p in checkpoints)  # streamed: one ingredient at a time
    soup = uniform_soup(deltas, base) if method == "uniform" else masked_soup(deltas, base)
    meta = dict(metas[0]) | {
        "strategy": f"soup:{method}",
        "strategy_params": {"ingredients": [str(p) for p in checkpoints]},
    }
    save_delta(out, soup, meta)
    return meta


@soup_app.command("uniform")
def soup_uniform(checkpoints: list[Path], out: Path = typer.Option(..., "--out")) -> None:
    """Uniform soup: the average of all ingredients (Wortsman et al. 2022)."""
    _soup("uniform", checkpoints, out)


@soup_app.command("masked")
def soup_masked(checkpoints: list[Path], out: Path = typer.Option(..., "--out")) -> None:
    """Masked soup: each tensor averaged over the ingredients that tuned it."""
    _soup("masked", checkpoints, out)


def _soup(method: str, checkpoints: list[Path], out: Path) -> None:
    try:
        build_soup_file(method, checkpoints, out)
    except PftError as exc:
        fail(str(exc))
    typer.echo(f"{method} soup of {len(checkpoints)} checkpoints written to {out}")

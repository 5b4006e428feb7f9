"""CLI commands on names and weights: units, strategies, angles."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pft.cli.app import app
from pft.cli.common import DEVICE, JSON, OVERRIDE, fail, parse_overrides, print_table
from pft.errors import PftError
from pft.jobs.specs import Hparams

_HP = Hparams()  # the predicted run's defaults are a job's


def _unit_map(model: str, num_classes: int, override: list[str] | None):
    from pft.model_catalog import unit_map_for
    from pft.model_factory import compute_shape_table

    try:
        return unit_map_for(
            model, num_classes, parse_overrides(override), compute=compute_shape_table
        )
    except PftError as exc:
        fail(str(exc))


NUM_CLASSES = typer.Option(100, "--num-classes", "-n", help="classes of the new head")


@app.command()
def units(
    model: str, num_classes: int = NUM_CLASSES, override: list[str] = OVERRIDE, as_json: bool = JSON
) -> None:
    """The unit map of MODEL: its units (ATTN/FFN; ConvNeXt: BLOCK), groups and counts."""
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
    k: int = typer.Option(
        None,
        help="units per group of ranked strategies (default: suggested; more than a group "
        "holds takes the whole group)",
    ),
    k_groups: str = typer.Option(
        None,
        "--k-groups",
        help="instead of --k: a fraction of each group (0.5) or JSON {group: k}",
    ),
    units: list[str] = typer.Option(None, "--unit", help="units of explicit strategies"),
    dataset: str = typer.Option(
        None, "--dataset", help="with --epochs: predict each strategy's time and peak memory"
    ),
    epochs: int = typer.Option(None, "--epochs", help="epochs of the predicted run"),
    batch_size: int = typer.Option(_HP.batch_size, "--batch-size", help="of the predicted run"),
    augment: bool = typer.Option(
        _HP.augment,
        "--augment/--no-augment",
        help="augmentation of the predicted run (off "
        "lets partial runs train on cached prefix tokens)",
    ),
    prefix_cache: bool = typer.Option(
        _HP.prefix_cache, "--prefix-cache/--no-prefix-cache", help="of the predicted run"
    ),
    device: str = DEVICE,
    threads: int = typer.Option(None, "--threads", help="torch threads (default: torch's)"),
    recalibrate: bool = typer.Option(
        False, "--recalibrate", help="measure again instead of using the cached calibration"
    ),
    as_json: bool = JSON,
) -> None:
    """Every built-in strategy resolved on MODEL: tuned units and tuned parameters.

    With --dataset and --epochs, also the predicted training time and peak memory of each on
    this machine (`pft.cost`): from a calibration of MODEL on this device kind, measured once
    (a few steps of the full, prefix and suffix paths) and cached in the data folder.

    Parameters not given take the registry's suggestion (K: half the smallest group). A
    ranking by angles needs a reference run, so those rows are provisional: the counts are
    exact (units of a group have one shape), the unit names a placeholder. Strategies that
    need a value with no suggestion (explicit units) are shown when it is given.
    """
    from pft.strategies import STRATEGIES, preview_strategy, previewable, suggested_params

    cost = None
    if (dataset is None) != (epochs is None):
        fail("--dataset and --epochs go together (the run whose cost is predicted)")
    if dataset is not None:
        cost = _cost_setup(
            model,
            dataset,
            epochs,
            batch_size,
            augment,
            prefix_cache,
            override,
            device,
            threads,
            recalibrate,
        )
        num_classes = cost["num_classes"]
    um = _unit_map(model, num_classes, override)
    given = {"k": k, "k_groups": k_groups, "units": list(units) if units else None}
    rows, skipped = [], []
    for name, strategy in STRATEGIES.items():
        if not strategy.applies(um):
            skipped.append(name)
            continue
        params = {n: v for n, v in given.items() if v is not None and strategy.takes(n)}
        if not any(n in params for n in strategy.one_of):
            params = suggested_params(um, name) | params
        if not previewable(name, params):
            continue
        try:
            selection = preview_strategy(um, name, **params)
        except PftError as exc:
            fail(str(exc))
        row = selection.to_dict(strategy.description)
        if cost is not None:
            row["cost"] = _predict(cost, um, selection)
        rows.append(row)
    if as_json:
        data = {"model": model, "num_classes": num_classes, "strategies": rows}
        if cost is not None:
            data["cost"] = {k: v for k, v in cost.items() if k != "calibration"}
            data["cost"]["calibration"] = cost["calibration"]
        if skipped:
            data["not_applicable"] = skipped
        typer.echo(json.dumps(data, indent=2))
        return
    extra = ["time", "peak MB"] if cost is not None else []
    print_table(
        [
            [
                r["name"],
                f"{r['tuned_params']:,}",
                f"{100 * r['tuned_fraction']:.2f}%",
                len(r["units"]),
                *(_cost_cells(r["cost"]) if cost is not None else []),
                r["description"],
            ]
            for r in rows
        ],
        ["strategy", "tuned params", "of model", "units", *extra, "description"],
    )
    if cost is not None:
        run = cost["run"]
        typer.echo(
            f"predicted on {cost['calibration']['device_kind']} for {run['epochs']} epochs of "
            f"{run['train_images']:,} images (+{run['eval_images']:,} evaluated per epoch), "
            f"batch {run['batch_size']}, augment {'on' if run['augment'] else 'off'}; "
            "time = prefix pass + training + evaluation; *: trains on cached prefix tokens"
        )
    for r in rows:
        for note in r.get("notes", []):
            typer.echo(f"{r['name']}: {note}")
    if skipped:
        kinds = "/".join(um.kinds)
        typer.echo(f"not applicable to {model} (only {kinds} units): {', '.join(skipped)}")


def _cost_setup(
    model: str,
    dataset: str,
    epochs: int,
    batch_size: int,
    augment: bool,
    prefix_cache: bool,
    override: list[str] | None,
    device: str | None,
    threads: int | None,
    recalibrate: bool,
) -> dict:
    """The calibration (cached, or measured now with a one-line message) and the run's shape."""
    from pft.cost.calibrate import cached_calibration
    from pft.cost.predict import RunShape
    from pft.datasets import load_dataset
    from pft.model_catalog import get_spec

    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        if value < 1:
            fail(f"{name} must be an integer >= 1, got {value}")
    if threads is not None:
        if threads < 1:
            fail(f"--threads must be an integer >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    overrides = parse_overrides(override)
    try:
        spec = get_spec(model, overrides)
        data = load_dataset(dataset, image_size=int(spec.overrides.get("img_size", 224)))

        def say(step: str) -> None:
            typer.echo(f"calibrating {model} on this device: {step}...", err=True)

        cal, _ = cached_calibration(
            model,
            overrides=overrides or None,
            device=device,
            recalibrate=recalibrate,
            progress=say,
            images=data.train.images,
            num_classes=data.num_classes,
        )
    except PftError as exc:
        fail(str(exc))
    run = RunShape(
        train_images=len(data.train),
        eval_images=len(data.heldout) + len(data.test),
        epochs=epochs,
        batch_size=batch_size,
        augment=augment,
        prefix_cache=prefix_cache,
    )
    return {
        "num_classes": data.num_classes,
        "dataset": dataset,
        "run": run.__dict__,
        "calibration": cal,
    }


def _predict(cost: dict, um, selection) -> dict:
    from pft.cost.predict import RunShape, predict

    run = RunShape(**cost["run"])
    return predict(cost["calibration"], um, selection.strategy, selection.tensors, run).to_dict()


def _cost_cells(p: dict) -> list[str]:
    return [f"{p['seconds']:.1f}s{'*' if p['prefix_cached'] else ''}", f"{p['peak_mb']:.0f}"]


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

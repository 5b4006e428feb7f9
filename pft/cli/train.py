"""CLI commands that train and evaluate: pretrain, finetune, evaluate, datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import typer

from pft.cli.app import app
from pft.cli.common import DEVICE, JSON, OVERRIDE, SHIFT, fail, parse_overrides, print_table
from pft.errors import PftError
from pft.strategies import DEFAULT_STRATEGY, STRATEGIES


def _described(name: str) -> str:
    """The registry's description of a strategy parameter (the options' help text)."""
    return next(p.description for s in STRATEGIES.values() for p in s.params if p.name == name)


class _Progress:
    """Engine callbacks that drive a tqdm bar and print one line per epoch."""

    def __init__(self, desc: str, quiet: bool = False) -> None:
        self.desc, self.quiet, self.bar = desc, quiet, None

    def on_progress(self, info: dict) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=info["total_steps"],
                desc=self.desc,
                unit="step",
                initial=info["step"] - 1,
                dynamic_ncols=True,
            )
        self.bar.update(info["step"] - self.bar.n)
        self.bar.set_postfix(epoch=info["epoch"], img_s=f"{info['images_per_sec']:.0f}")

    def on_epoch(self, epoch: int, metrics: dict, angles: list[dict]) -> None:
        if self.quiet:
            return
        line = (
            f"epoch {epoch}: train loss {metrics['train_loss']:.4f}  held-out acc "
            f"{metrics['heldout_acc']:.4f}  test acc {metrics['test_acc']:.4f}  "
            f"{metrics['images_per_sec']:.0f} img/s"
        )
        if self.bar is not None:
            self.bar.write(line)
        else:
            typer.echo(line, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@app.command()
def pretrain(
    out: Path = typer.Option(
        None, "--out", help="model folder (default: the data folder's models/pft/vit-tiny-fmnist)"
    ),
    epochs: int = typer.Option(None, "--epochs", min=1, help="override the recipe's epochs"),
    subset: int = typer.Option(None, "--subset", min=1, help="train on the first N images only"),
    ship: Path = typer.Option(
        None,
        "--ship",
        help="also write the package's fp16 copy with its sha256 and measured accuracy here "
        "(how pft/assets/vit-tiny-fmnist was made)",
    ),
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Pre-train the built-in backbone pft/vit-tiny-fmnist on Fashion-MNIST classes 0-4."""
    from pft.engine import pretrain as run

    bar = _Progress("pretrain", quiet=False)
    try:
        info = run(out, bar, epochs=epochs, subset=subset, device=device)
        if ship is not None:
            from pft.pretrain import ship as ship_backbone

            line = "pft pretrain" + (f" --epochs {epochs}" if epochs else "")
            info["shipped"] = ship_backbone(
                Path(info["weights"]).parent, ship, command=f"{line} --ship {ship}"
            )
    except PftError as exc:
        fail(str(exc))
    finally:
        bar.close()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        typer.echo(
            f"pft/vit-tiny-fmnist: test accuracy {info['test_acc']:.4f} on 5 classes in "
            f"{info['seconds']:.0f} s; weights at {info['weights']}"
        )


def _reference_angles(path: Path, strategy: str) -> dict[str, float]:
    """Per-unit angles from an angles.json (or a run folder holding one)."""
    from pft.strategies import reference_strategies

    allowed = reference_strategies()
    path = path / "angles.json" if path.is_dir() else path
    if not path.is_file():
        raise PftError(
            f"--reference {str(path)!r} does not exist (give an angles.json or a run "
            f"folder of a {' or '.join(allowed)} fine-tuning run)"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("strategy", allowed[0]) not in allowed:
            raise PftError(
                f"--reference {str(path)!r} comes from a {data['strategy']!r} run; {strategy} "
                f"ranks units by the angles of a {' or '.join(allowed)} fine-tuning run"
            )
        units = data["units"]
        if isinstance(units, dict):
            return {k: float(v) for k, v in units.items()}
        return {u["name"]: float(u["angle_deg"]) for u in units}
    except (ValueError, KeyError, TypeError) as exc:
        raise PftError(f"--reference {str(path)!r} is not an angles.json ({exc})") from exc


@app.command()
def finetune(
    model: str = typer.Option(..., "--model", help="catalogue or timm model name"),
    dataset: str = typer.Option(..., "--dataset", help="dataset name (see `pft datasets`)"),
    strategy: str = typer.Option(
        DEFAULT_STRATEGY, "--strategy", help="strategy (see `pft strategies`)"
    ),
    out: Path = typer.Option(..., "--out", help="run folder for delta, metrics and angles"),
    k: int = typer.Option(None, "--k", help=f"ranked strategies: {_described('k')}"),
    k_groups: str = typer.Option(
        None,
        "--k-groups",
        help=f"ranked strategies, {_described('k_groups')}; a mapping as JSON",
    ),
    order: str = typer.Option(None, "--order", help=f"ranked strategies: {_described('order')}"),
    reference: Path = typer.Option(
        None,
        "--reference",
        help="ranked strategies: angles.json of a full fine-tuning run (or its folder)",
    ),
    units: str = typer.Option(
        None, "--units", help="explicit strategies: comma-separated units, ATTN.0,FFN.3"
    ),
    epochs: int = typer.Option(None, "--epochs"),
    lr: float = typer.Option(None, "--lr"),
    batch_size: int = typer.Option(None, "--batch-size"),
    seed: int = typer.Option(None, "--seed", help="data order and augmentation"),
    head_seed: int = typer.Option(None, "--head-seed", help="head initialisation (soups share it)"),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (CUDA only)"),
    augment: bool = typer.Option(
        None,
        "--augment/--no-augment",
        help="random translation (and flips) of training batches; off lets a partial run "
        "train on cached frozen-prefix tokens [default: on]",
    ),
    prefix_cache: bool = typer.Option(
        None,
        "--prefix-cache/--no-prefix-cache",
        help="cache the frozen prefix when valid (augmentation off) [default: on]",
    ),
    prefix_cache_mb: int = typer.Option(
        None, "--prefix-cache-mb", min=1, help="memory budget of the prefix cache, MB"
    ),
    pretrained: bool = typer.Option(
        True, "--pretrained/--random", help="pre-trained or random weights"
    ),
    override: list[str] = OVERRIDE,
    shift: list[str] = SHIFT,
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Fine-tune a model on a dataset with one strategy; writes delta, metrics and angles."""
    from pft.jobs.specs import FinetuneSpec, Hparams
    from pft.strategies import get_strategy

    hp = {
        k_: v
        for k_, v in dict(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            head_seed=head_seed,
            augment=augment,
            prefix_cache=prefix_cache,
            prefix_cache_mb=prefix_cache_mb,
        ).items()
        if v is not None
    }
    # The options name registry parameters; --reference gives the strategy's angles.
    params: dict[str, Any] = {
        n: v
        for n, v in {
            "k": k,
            "k_groups": k_groups,
            "order": order,
            "units": [u.strip() for u in units.split(",") if u.strip()] if units else None,
        }.items()
        if v is not None
    }
    try:
        # Values the strategy takes are checked and normalised by the registry (--k-groups
        # text: a fraction or JSON); the engine refuses the rest, naming what it accepts.
        s = get_strategy(strategy)
        params = {n: s.param(n).check(v) if s.takes(n) else v for n, v in params.items()}
        if reference is not None:
            takes = [p.name for p in s.params if p.kind == "angles"]
            if not takes:
                raise PftError(f"strategy {strategy!r} takes no --reference (it ranks nothing)")
            params[takes[0]] = _reference_angles(reference, strategy)
    except PftError as exc:
        fail(str(exc))
    cfg = FinetuneSpec(
        model=model,
        dataset=dataset,
        strategy=strategy,
        strategy_params=params,
        hparams=Hparams(**hp, compile=compile_),
        pretrained=pretrained,
        model_overrides=parse_overrides(override),
        shifts=list(shift or []),
    )
    summary = _run_finetune(cfg, out, device)
    if as_json:
        typer.echo(json.dumps({k_: v for k_, v in summary.items() if k_ != "config"}, indent=2))
        return
    s = summary["strategy"]
    typer.echo(
        f"{summary['model']} on {summary['dataset']} with {s['name']} "
        f"({s['tuned_params']:,} tuned, {100 * s['tuned_fraction']:.2f}%): test acc "
        f"{summary['test_acc']:.4f}, held-out acc {summary['heldout_acc']:.4f}, "
        f"{summary['train_seconds']:.0f} s training"
    )
    for name, m in summary["shifts"].items():
        typer.echo(f"  shift {name}: acc {m['acc']:.4f}")
    typer.echo(f"wrote {out}/delta.safetensors, metrics.json, angles.json")


def _run_finetune(cfg, out: Path, device: str | None) -> dict:
    from pft.engine import finetune as run

    created = not out.exists()
    bar = _Progress(f"{cfg.strategy}")
    try:
        return run(cfg, out, device=device, callbacks=bar)
    except PftError as exc:
        if created:  # nothing half-written: a run that failed on its input leaves no folder
            shutil.rmtree(out, ignore_errors=True)
        fail(str(exc))
    except KeyboardInterrupt:
        bar.close()
        typer.echo(
            f"\ninterrupted; run the same command again to resume from {out}/state", err=True
        )
        raise typer.Exit(130) from None
    finally:
        bar.close()


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="delta.safetensors or its run folder"),
    dataset: str = typer.Option(None, "--dataset", help="default: the checkpoint's dataset"),
    shift: list[str] = SHIFT,
    split: str = typer.Option("test", "--split", help="train, heldout or test"),
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Evaluate a delta checkpoint on a dataset split, in and out of distribution."""
    from pft.checkpoint import load_delta
    from pft.engine import evaluate_checkpoint

    try:
        dataset = dataset or load_delta(checkpoint)[1]["dataset"]
        result = evaluate_checkpoint(checkpoint, dataset, shift or [], split, device=device)
    except PftError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    rows = [["(none)", f"{result['acc']:.4f}", f"{result['loss']:.4f}"]]
    rows += [[n, f"{m['acc']:.4f}", f"{m['loss']:.4f}"] for n, m in result["shifts"].items()]
    typer.echo(f"{checkpoint} on {dataset} ({split}):")
    print_table(rows, ["shift", "acc", "loss"])


@app.command()
def datasets(as_json: bool = JSON) -> None:
    """List the dataset names and distribution shifts `finetune` and `evaluate` accept."""
    from pft.dataset_catalog import catalogue

    data = catalogue()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    print_table(
        [[d["name"], d["num_classes"] or "?", d["description"]] for d in data["datasets"]],
        ["dataset", "classes", "description"],
    )
    typer.echo("")
    print_table(
        [
            [s["name"], ",".join(map(str, s["severities"])), s["description"]]
            for s in data["shifts"]
        ],
        ["shift", "severities", "description"],
    )

"""`pft rank`: per-unit scores of a selection criterion (`pft.criteria`) for a model on a
dataset; `criterion_topk` tunes the top-K units of each group by them. A lab ``rank`` job
(`pft.jobs.specs.RankSpec`) runs the same `pft.criteria.ranking.rank`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pft.cli.app import app
from pft.cli.common import DEVICE, JSON, OVERRIDE, fail, parse_overrides, print_table
from pft.criteria.registry import CRITERIA
from pft.errors import PftError


class _Bar:
    """A tqdm bar on stderr, opened on the first report."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="batch", dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@app.command()
def rank(
    model: str = typer.Option(..., "--model", help="catalogue or timm model name"),
    dataset: str = typer.Option(..., "--dataset", help="dataset name (see `pft datasets`)"),
    criterion: str = typer.Option(
        ..., "--criterion", help=f"selection criterion: {', '.join(CRITERIA)}"
    ),
    batches: int = typer.Option(None, "--batches", help="gradient criteria: batches to take"),
    batch_size: int = typer.Option(None, "--batch-size", help="images per batch"),
    epochs: int = typer.Option(None, "--epochs", help="short_angle: epochs of the short run"),
    lr: float = typer.Option(None, "--lr", help="short_angle: learning rate of the short run"),
    reference: Path = typer.Option(
        None, "--reference", help="angle: delta, run folder or angles.json of a full run"
    ),
    seed: int = typer.Option(0, "--seed", help="data order and head initialisation"),
    pretrained: bool = typer.Option(
        True, "--pretrained/--random", help="pre-trained or random weights"
    ),
    override: list[str] = OVERRIDE,
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Score every unit of MODEL on DATASET by a selection criterion (no weight update for the
    gradient criteria); prints {"criterion", "units": [{"name", "group", "score"}], "seconds"}."""
    from pft.criteria.ranking import rank as run

    # The options name registry parameters; a criterion refuses those it does not declare.
    given = {"batches": batches, "batch_size": batch_size, "epochs": epochs, "lr": lr}
    params: dict[str, Any] = {n: v for n, v in given.items() if v is not None}
    bar = _Bar(criterion)
    try:
        scores = run(
            model,
            dataset,
            criterion,
            seed=seed,
            params=params,
            reference=reference,
            pretrained=pretrained,
            overrides=parse_overrides(override),
            device=device,
            progress=bar,
        )
    except PftError as exc:
        bar.close()
        fail(str(exc))
    bar.close()
    data = scores.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    print_table(
        [[u["name"], u["group"], f"{u['score']:.6g}"] for u in data["units"]],
        ["unit", "group", "score"],
    )
    typer.echo(f"{scores.criterion}: {scores.seconds:.2f} s")

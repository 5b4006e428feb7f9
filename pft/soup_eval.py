"""Greedy soups of delta checkpoints, scored on a dataset's held-out split.

The algorithm is `pft.soups.greedy_soup` (Wortsman et al. 2022, Recipe 1); this module supplies
its score (held-out top-1 of the pre-trained point with the soup applied) and evaluates the
final soup on the test split and shifted copies of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from pft.checkpoint import base_from_meta, load_delta, same_base, save_delta
from pft.datasets import load_dataset
from pft.errors import PftError
from pft.evaluation import evaluate_shifts, evaluate_split
from pft.soups import full_state, greedy_soup


def greedy_soup_run(
    checkpoints: list[Path],
    dataset: str | None = None,
    *,
    shifts: Iterable[str] = (),
    out: Path | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Builds the greedy soup; returns its trace, selected ingredients and metrics."""
    if len(checkpoints) < 2:
        raise PftError("a soup needs at least two checkpoints")
    loaded = [load_delta(p) for p in checkpoints]
    metas = [m for _, m in loaded]
    same_base(metas)
    dataset = dataset or metas[0]["dataset"]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = base_from_meta(metas[0])
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.to(device)
    dc = metas[0]["data_config"]
    data = load_dataset(dataset, image_size=dc["input_size"][-1])
    if data.num_classes != metas[0]["num_classes"]:
        raise PftError(
            f"the checkpoints have {metas[0]['num_classes']} classes but dataset "
            f"{dataset!r} has {data.num_classes}"
        )

    def use(soup: Mapping[str, torch.Tensor]) -> None:
        model.load_state_dict(full_state(soup, base))

    def score(soup: Mapping[str, torch.Tensor]) -> float:
        use(soup)
        return evaluate_split(model, data.heldout, dc, device)["acc"]

    result = greedy_soup([t for t, _ in loaded], score, base)
    use(result.soup)
    test = evaluate_split(model, data.test, dc, device)
    shift_metrics = evaluate_shifts(model, data.test, dc, device, list(shifts))
    if out is not None:
        meta = dict(metas[0]) | {
            "strategy": "soup:greedy",
            "strategy_params": {"ingredients": [str(checkpoints[i]) for i in result.selected]},
            "dataset": dataset,
        }
        save_delta(out, result.soup, meta)
    return {
        "dataset": dataset,
        "trace": result.trace_dicts(),
        "selected": result.selected,
        "heldout_acc": result.score,
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "shifts": shift_metrics,
    }

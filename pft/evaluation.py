"""Evaluation: top-1 accuracy and loss on a split, in and out of distribution (shifts)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pft.dataset_catalog import parse_shift
from pft.datasets import Split, load_dataset
from pft.errors import PftError
from pft.preprocess import prepare

EVAL_BATCH = 256


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: Split,
    data_config: dict[str, Any],
    device: torch.device | str,
    *,
    shift: tuple[str, int] | None = None,
    batch_size: int = EVAL_BATCH,
) -> dict[str, float]:
    """``{"acc", "loss"}`` (top-1 accuracy in [0, 1], mean cross-entropy without smoothing)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i, start in enumerate(range(0, len(split), batch_size)):
        images = split.images[start : start + batch_size]
        labels = split.labels[start : start + batch_size].to(device)
        x = prepare(images, data_config, device, shift=shift, shift_seed=i)
        with autocast_for(device):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
    model.train(was_training)
    n = max(1, len(split))
    return {"acc": correct / n, "loss": loss_sum / n}


def evaluate_shifts(
    model: nn.Module,
    split: Split,
    data_config: dict[str, Any],
    device: torch.device | str,
    shifts: Iterable[str],
) -> dict[str, dict[str, float]]:
    """Metrics per shift spec (``"blur"`` or ``"blur:5"``)."""
    return {
        s: evaluate_split(model, split, data_config, device, shift=parse_shift(s)) for s in shifts
    }


def evaluate_checkpoint(
    delta_path: str | Path,
    dataset: str,
    shifts: Iterable[str] = (),
    split: str = "test",
    *,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Evaluates a delta checkpoint on a dataset split and optional shifted copies of it."""
    from pft.checkpoint import build_model_from_delta

    shifts = list(shifts)
    for s in shifts:
        parse_shift(s)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = build_model_from_delta(delta_path, device=device)
    dc = meta["data_config"]
    data = load_dataset(dataset, image_size=dc["input_size"][-1])
    if data.num_classes != meta["num_classes"]:
        raise PftError(
            f"the checkpoint has {meta['num_classes']} classes but dataset "
            f"{dataset!r} has {data.num_classes}"
        )
    part = data.split(split)
    out = {
        "checkpoint": str(delta_path),
        "dataset": dataset,
        "split": split,
        **evaluate_split(model, part, dc, device),
    }
    out["shifts"] = evaluate_shifts(model, part, dc, device, shifts)
    return out

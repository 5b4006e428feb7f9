"""The one soup pipeline: load delta checkpoints of one pre-trained start, merge them with a
registry method, evaluate the soup and save it as a delta checkpoint with its lineage.

The CLI (`pft soup ...`), the job runner (soup jobs) and the reproduction study all call
`make_soup`. Ingredients are read lazily, one tensor at a time, so memory does not grow with
their number. Methods that need the held-out split (greedy) re-score every ingredient here
unless ``heldout_scores`` are given: scores recorded on another device or precision would
bias the strict comparison. A method's per-group mixing weights (``Merged.mixing``) are
returned and saved with the soup's lineage (``strategy_params["mixing"]``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pft.checkpoint import base_from_meta, delta_meta, delta_path, same_base, save_delta
from pft.datasets import DatasetSplits, Split, load_dataset
from pft.errors import PftError
from pft.evaluation import evaluate_shifts, evaluate_split
from pft.soups.averaging import Merged, full_state
from pft.soups.registry import MIN_INGREDIENTS, get_method
from pft.training import Cancelled
from pft.weights import SafetensorsWeights

State = Mapping[str, torch.Tensor]


def open_ingredient(path: str | Path) -> tuple[SafetensorsWeights, dict[str, Any]]:
    """A lazy view of a delta checkpoint (file or run folder) and its decoded metadata."""
    weights = SafetensorsWeights(delta_path(path))
    return weights, delta_meta(weights.metadata, weights.path)


class SoupScorer:
    """One model at the ingredients' pre-trained point; scores any delta applied on top of it."""

    def __init__(
        self,
        meta: Mapping[str, Any],
        dataset: str | None,
        device: torch.device | str,
        limit: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = base_from_meta(meta)
        self.base = {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()}
        # State-dict entries that are not parameters (BatchNorm statistics): merged as means.
        self.buffers = frozenset(self.base) - {n for n, _ in self.model.named_parameters()}
        self.model.to(self.device).eval()
        self.data_config = meta["data_config"]
        self.data: DatasetSplits | None = None
        if dataset is not None:
            data = load_dataset(dataset, image_size=int(self.data_config["input_size"][-1]))
            if data.num_classes != int(meta["num_classes"]):
                raise PftError(
                    f"the checkpoints have {meta['num_classes']} classes but dataset "
                    f"{dataset!r} has {data.num_classes}"
                )
            if limit is not None:  # the runs saw only the first `limit` images of each split
                data = DatasetSplits(
                    data.name,
                    data.classes,
                    *(
                        Split(s.images[:limit], s.labels[:limit])
                        for s in (data.train, data.heldout, data.test)
                    ),
                )
            self.data = data

    def load(self, delta: State) -> None:
        self.model.load_state_dict(full_state(delta, self.base))

    def split(self, name: str, delta: State) -> dict[str, float]:
        assert self.data is not None  # scoring needs a dataset (checked by make_soup)
        self.load(delta)
        return evaluate_split(self.model, self.data.split(name), self.data_config, self.device)

    def shifts(self, delta: State, shifts: Sequence[str]) -> dict[str, dict[str, float]]:
        assert self.data is not None
        self.load(delta)
        return evaluate_shifts(self.model, self.data.test, self.data_config, self.device, shifts)


def same_dataset(metas: Sequence[Mapping[str, Any]], labels: Sequence[Any]) -> None:
    """Raises PftError naming the ingredients unless all were fine-tuned on one dataset."""
    by: dict[str, list[str]] = {}
    for meta, label in zip(metas, labels, strict=True):
        by.setdefault(str(meta.get("dataset")), []).append(str(label))
    if len(by) > 1:
        parts = "; ".join(f"{d}: {', '.join(ls)}" for d, ls in by.items())
        raise PftError(
            f"soup ingredients must be fine-tuned on one dataset, these were not ({parts})"
        )


def _call(callbacks: Any, name: str, *args: Any) -> Any:
    fn = getattr(callbacks, name, None) if callbacks is not None else None
    return fn(*args) if fn is not None else None


def _tuned_params(soup: State) -> int:
    return sum(int(v.numel()) for v in soup.values())


def make_soup(
    method: str,
    checkpoints: Sequence[str | Path],
    *,
    params: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    shifts: Sequence[str] = (),
    out: Path | None = None,
    device: torch.device | str | None = None,
    evaluate: bool = True,
    callbacks: Any = None,
    labels: Sequence[Any] | None = None,
    heldout_scores: Sequence[float] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Builds the ``method`` soup of ``checkpoints``; returns what it computed.

    ``dataset`` defaults to the checkpoints' own; it is read when the method needs held-out
    scores or ``evaluate`` is true (held-out, test and ``shifts`` metrics of the soup).
    ``labels`` name the ingredients in the saved lineage (job ids; default: the paths).
    ``callbacks``: ``should_cancel()`` (True raises `pft.training.Cancelled`) and
    ``on_progress({"progress", "step", "total_steps"})``. ``heldout_scores`` skip re-scoring
    the ingredients alone; ``limit`` keeps the first N images of each split (smoke runs).

    Returns ``{"method", "params", "ingredients", "selected" (indices), "trace", "mixing",
    "model", "dataset", "tuned_params", "device"}`` plus, when evaluated, ``"heldout_acc",
    "test_acc", "test_loss", "shifts": {spec: {"acc", "loss"}}``.
    """
    merge_method = get_method(method)
    method_params = merge_method.validate(params)
    if len(checkpoints) < MIN_INGREDIENTS:
        raise PftError(
            f"a soup needs at least {MIN_INGREDIENTS} checkpoints, got {len(checkpoints)}",
            field="ingredients",
        )
    labels = list(labels) if labels is not None else [str(p) for p in checkpoints]
    opened = [open_ingredient(p) for p in checkpoints]
    deltas = [w for w, _ in opened]
    metas = [m for _, m in opened]
    same_base(metas)
    same_dataset(metas, labels)
    dataset = dataset or metas[0]["dataset"]
    candidates = merge_method.heldout_candidates(len(deltas), method_params)
    read_data = evaluate or candidates > 0
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scorer = SoupScorer(metas[0], dataset if read_data else None, device, limit)
    steps = candidates + 2
    done = 0

    def progress() -> None:
        nonlocal done
        done += 1
        info = {"progress": min(done, steps) / steps, "step": min(done, steps)}
        _call(callbacks, "on_progress", info | {"total_steps": steps})

    def cancel_point() -> None:
        if _call(callbacks, "should_cancel"):
            raise Cancelled("soup cancelled")

    def heldout(delta: State) -> float:
        cancel_point()
        acc = scorer.split("heldout", delta)["acc"]
        progress()
        return acc

    builder = importlib.import_module(merge_method.module)
    merged: Merged = builder.merge(
        deltas,
        scorer.base,
        score=heldout if candidates > 0 else None,
        heldout_scores=heldout_scores,
        buffers=scorer.buffers,
        **method_params,
    )
    cancel_point()
    progress()
    result: dict[str, Any] = {
        "method": merge_method.name,
        "params": method_params,
        "ingredients": labels,
        "selected": merged.selected,
        "trace": merged.trace,
        "mixing": merged.mixing,
        "model": metas[0]["base_model"],
        "dataset": dataset,
        "tuned_params": _tuned_params(merged.soup),
        "device": str(device),
    }
    if evaluate:
        test = scorer.split("test", merged.soup)
        result |= {
            "heldout_acc": scorer.split("heldout", merged.soup)["acc"],
            "test_acc": test["acc"],
            "test_loss": test["loss"],
            "shifts": scorer.shifts(merged.soup, list(shifts)),
        }
    if out is not None:
        meta = dict(metas[0]) | {
            "strategy": f"soup:{merge_method.name}",
            "strategy_params": {
                "ingredients": labels,
                "selected": [labels[i] for i in merged.selected],
                **method_params,
                **({"mixing": merged.mixing} if merged.mixing else {}),
            },
            "dataset": dataset,
        }
        save_delta(Path(out), merged.soup, meta)
    progress()
    return result

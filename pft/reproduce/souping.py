"""Soups of the study's runs: uniform, greedy and masked, scored on held-out, test and shifts.

Ingredients are the delta checkpoints of runs that share the pre-trained start and the head
initialisation (``head_seed``) but differ in seed and learning rate (Wortsman et al. 2022). The
averaging is `pft.soups`; this module only loads ingredients and evaluates the results. The
greedy soup orders and accepts ingredients by held-out accuracy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pft.checkpoint import base_from_meta, load_delta, same_base
from pft.datasets import DatasetSplits, Split, load_dataset
from pft.evaluation import evaluate_shifts, evaluate_split
from pft.reproduce.results import Record
from pft.soups import greedy_soup, masked_soup, uniform_soup


class SoupEvaluator:
    """One model at the ingredients' pre-trained point; scores any delta applied on top of it."""

    def __init__(
        self,
        meta: Mapping[str, Any],
        dataset: str,
        device: torch.device | str,
        limit: int | None = None,
    ):
        self.device = torch.device(device)
        self.model = base_from_meta(meta).to(self.device).eval()
        self.base = {n: p.detach().to("cpu").clone() for n, p in self.model.named_parameters()}
        self.data_config = meta["data_config"]
        data = load_dataset(dataset, image_size=int(self.data_config["input_size"][-1]))
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

    def _load(self, delta: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(delta.get(name, self.base[name]))

    def heldout(self, delta: Mapping[str, torch.Tensor]) -> float:
        self._load(delta)
        return evaluate_split(self.model, self.data.heldout, self.data_config, self.device)["acc"]

    def scores(self, delta: Mapping[str, torch.Tensor], shifts: Sequence[str]) -> dict[str, Any]:
        """``{"heldout", "test", "shifts": {spec: acc}}`` accuracies of ``delta``."""
        self._load(delta)
        dc, dev = self.data_config, self.device
        shifted = evaluate_shifts(self.model, self.data.test, dc, dev, shifts)
        return {
            "heldout": evaluate_split(self.model, self.data.heldout, dc, dev)["acc"],
            "test": evaluate_split(self.model, self.data.test, dc, dev)["acc"],
            "shifts": {k: v["acc"] for k, v in shifted.items()},
        }


def _params(deltas: Sequence[Mapping[str, torch.Tensor]]) -> int:
    union: dict[str, int] = {}
    for d in deltas:
        union |= {k: v.numel() for k, v in d.items()}
    return sum(union.values())


def soup_runs(
    name: str,
    records: Sequence[Record],
    shifts: Sequence[str],
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Uniform, greedy and (where ingredients tune different tensors) masked soups of the runs."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = [load_delta(r.folder / "delta.safetensors") for r in records]
    deltas = [t for t, _ in loaded]
    metas = [m for _, m in loaded]
    same_base(metas)
    ev = SoupEvaluator(metas[0], records[0].spec.dataset, device, records[0].spec.train_limit)
    individual = [
        {
            "run_id": r.spec.run_id,
            "label": r.label,
            "lr": r.spec.lr,
            "seed": r.spec.seed,
            "heldout": r.heldout,
            "test": r.test,
            "shifts": r.shift_acc,
            "tuned_params": r.tuned_params,
        }
        for r in records
    ]
    uniform = uniform_soup(deltas, ev.base)
    greedy = greedy_soup(deltas, ev.heldout, ev.base, [r.heldout for r in records])
    out: dict[str, Any] = {
        "name": name,
        "dataset": records[0].spec.dataset,
        "strategies": sorted({r.label for r in records}),
        "ingredients": [r.spec.run_id for r in records],
        "individual": individual,
        "tuned_params": _params(deltas),
        "uniform": ev.scores(uniform, shifts),
        "greedy": ev.scores(greedy.soup, shifts)
        | {
            "selected": [records[i].spec.run_id for i in greedy.selected],
            "trace": greedy.trace_dicts(),
        },
        "masked": None,
    }
    if len({frozenset(d) for d in deltas}) > 1:  # otherwise masked == uniform by construction
        out["masked"] = ev.scores(masked_soup(deltas, ev.base), shifts)
    return out

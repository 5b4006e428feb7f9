"""Soups of the study's runs: uniform, greedy and masked, scored on held-out, test and shifts.

Ingredients are the delta checkpoints of runs that share the pre-trained start and the head
initialisation (``head_seed``) but differ in seed and learning rate (Wortsman et al. 2022).
Every soup is built and scored by `pft.soups.pipeline.make_soup`; the greedy soup orders and
accepts ingredients by the held-out accuracy the runs recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pft.reproduce.plan import STUDY_SOUPS, UNIFORM_WHEN_ALIGNED
from pft.reproduce.results import Record
from pft.soups.pipeline import make_soup, open_ingredient


def _scores(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "heldout": result["heldout_acc"],
        "test": result["test_acc"],
        "shifts": {k: v["acc"] for k, v in result["shifts"].items()},
    }


def soup_runs(
    name: str,
    records: Sequence[Record],
    shifts: Sequence[str],
    device: str | None = None,
) -> dict[str, Any]:
    """Uniform, greedy and (where ingredients tune different tensors) masked soups of the runs."""
    paths = [r.folder / "delta.safetensors" for r in records]
    ids = [r.spec.run_id for r in records]
    common = {
        "dataset": records[0].spec.dataset,
        "shifts": list(shifts),
        "device": device,
        "labels": ids,
        "heldout_scores": [r.heldout for r in records],
        "limit": records[0].spec.train_limit,
    }
    tensor_sets = {frozenset(open_ingredient(p)[0]) for p in paths}
    out: dict[str, Any] = {
        "name": name,
        "dataset": records[0].spec.dataset,
        "strategies": sorted({r.label for r in records}),
        "ingredients": ids,
        "individual": [
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
        ],
    }
    out["tuned_params"] = 0
    for method in STUDY_SOUPS:
        if method in UNIFORM_WHEN_ALIGNED and len(tensor_sets) == 1:
            out[method] = None  # equal to the uniform soup by construction
            continue
        result = make_soup(method, paths, **common)
        out[method] = _scores(result)
        if result["trace"]:  # a method that chose its ingredients
            selected = [ids[i] for i in result["selected"]]
            out[method] |= {"selected": selected, "trace": result["trace"]}
        out["tuned_params"] = max(out["tuned_params"], result["tuned_params"])
    return out

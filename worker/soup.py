"""Soup jobs: average succeeded fine-tuning runs of one base model, then evaluate the soup.

Uniform and masked soups average all ingredients; the greedy soup (Wortsman et al. 2022)
adds ingredients in order of held-out accuracy while held-out accuracy strictly rises. The
ingredients are read lazily, one tensor at a time, so memory does not grow with their number. The
soup is saved as a delta checkpoint in the job folder and evaluated on the test split and on
the requested shifts; the greedy trace and the scores go to the ``soups`` row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from backend import crud
from backend.db.session import session_scope
from pft.checkpoint import FORMAT, JSON_KEYS, base_from_meta, same_base, save_delta
from pft.datasets import load_dataset
from pft.engine import Cancelled, evaluate_split
from pft.evaluation import evaluate_shifts
from pft.soups import full_state, greedy_soup, masked_soup, uniform_soup
from pft.weights import SafetensorsWeights
from worker.jobs import JobContext, JobFailed, record_files, verified_delta

METHODS = ("uniform", "greedy", "masked")


def _open_delta(path: Path, job_id: int) -> tuple[SafetensorsWeights, dict[str, Any]]:
    """A lazy view of an ingredient (one tensor in memory at a time) and its metadata."""
    weights = SafetensorsWeights(path)
    if weights.metadata.get("format") != FORMAT:
        raise JobFailed(f"checkpoint of job {job_id} ({path}) is not a pft delta checkpoint")
    meta = {k: json.loads(v) if k in JSON_KEYS else v for k, v in weights.metadata.items()}
    return weights, meta


def make_soup(ctx: JobContext) -> dict[str, Any]:
    method = ctx.config.get("method", "uniform")
    if method not in METHODS:
        raise JobFailed(f"soup method must be one of {', '.join(METHODS)}, got {method!r}")
    ids = [int(i) for i in ctx.config.get("ingredients") or []]
    if len(ids) < 2:
        raise JobFailed("a soup needs at least two ingredient jobs")
    shifts = list(ctx.config.get("shifts") or [])
    reporter = ctx.reporter
    deltas, metas = [], []
    for job_id in ids:
        delta, meta = _open_delta(verified_delta(ctx, job_id), job_id)
        deltas.append(delta)
        metas.append(meta)
    same_base(metas)
    device = torch.device(ctx.device)
    model = base_from_meta(metas[0]).to(device)
    base = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    dc = metas[0]["data_config"]
    data = load_dataset(metas[0]["dataset"], image_size=int(dc["input_size"][-1]))
    steps = len(ids) + 2
    done = 0

    def load(delta: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(full_state(delta, base))

    def heldout(delta: dict[str, torch.Tensor]) -> float:
        nonlocal done
        if reporter.should_cancel():
            raise Cancelled("soup cancelled")
        load(delta)
        acc = evaluate_split(model, data.heldout, dc, device)["acc"]
        done += 1
        reporter.set_progress(done / steps, step=done, total_steps=steps)
        return acc

    trace: list[dict[str, Any]] = []
    if method == "greedy":
        # Ingredients are re-scored here rather than trusting the held-out accuracies their
        # jobs recorded: another device or precision there would bias the strict comparison.
        greedy = greedy_soup(deltas, heldout, base)
        soup, selected = greedy.soup, [ids[i] for i in greedy.selected]
        trace = [
            {
                "order": t["order"],
                "job_id": ids[t["ingredient"]],
                "individual_score": t["individual_score"],
                "candidate_score": t["candidate_score"],
                "accepted": t["accepted"],
            }
            for t in greedy.trace_dicts()
        ]
    else:
        average = uniform_soup if method == "uniform" else masked_soup
        soup, selected = average(deltas, base), ids
    reporter.check_owned()
    if reporter.should_cancel():
        raise Cancelled("soup cancelled")

    load(soup)
    heldout_acc = evaluate_split(model, data.heldout, dc, device)["acc"]
    test = evaluate_split(model, data.test, dc, device)
    shifted = evaluate_shifts(model, data.test, dc, device, shifts)
    reporter.set_progress(1.0, step=steps, total_steps=steps)
    meta = dict(metas[0]) | {
        "strategy": f"soup:{method}",
        "strategy_params": {"ingredients": ids, "selected": selected},
    }
    save_delta(ctx.out_dir / "delta.safetensors", soup, meta)
    scores_out = {name: m["acc"] for name, m in shifted.items()}
    with session_scope(ctx.db_url) as s:
        crud.record_soup_result(
            s, job_id=ctx.job_id, trace=trace, score_in=test["acc"], scores_out=scores_out
        )
    record_files(ctx, {"soup": "delta.safetensors"})
    return {
        "method": method,
        "ingredients": ids,
        "selected": selected,
        "dataset": metas[0]["dataset"],
        "model": metas[0]["base_model"],
        "heldout_acc": heldout_acc,
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "shifts": shifted,
        "trace": trace,
        "device": str(device),
    }

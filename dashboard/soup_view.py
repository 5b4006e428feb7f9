"""Soup bookkeeping for the Soups page (pure): which jobs may be mixed, and the numbers to plot.

Ingredients must be succeeded fine-tuning jobs of the same pre-trained model and dataset (the
backend enforces it too and names the job that breaks the rule); the page explains it up front.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

IN_DISTRIBUTION = "in-distribution"


def family(job: Mapping) -> tuple[str, str, str]:
    """(model, dataset, base) — jobs of one family start from the same pre-trained weights."""
    config = job.get("config") or {}
    base = json.dumps(
        {
            "overrides": config.get("model_overrides") or {},
            "pretrained": config.get("pretrained", True),
        },
        sort_keys=True,
    )
    return str(job.get("model")), str(job.get("dataset")), base


def family_label(key: tuple[str, str, str]) -> str:
    """``model / dataset``, plus the overrides or "random init" where they differ from usual."""
    base = json.loads(key[2])
    extra = []
    if base["overrides"]:
        extra.append(", ".join(f"{k}={v}" for k, v in sorted(base["overrides"].items())))
    if not base["pretrained"]:
        extra.append("random init")
    return f"{key[0]} / {key[1]}" + (f" [{'; '.join(extra)}]" if extra else "")


def incompatibility(job: Mapping, chosen: tuple[str, str, str]) -> str | None:
    """Why ``job`` cannot join a soup of the ``chosen`` family, or None if it can."""
    if job.get("kind") != "finetune":
        return f"a {job.get('kind')} job; only fine-tuning jobs can be ingredients"
    if job.get("status") != "succeeded":
        return f"{job.get('status')}; only succeeded jobs can be ingredients"
    model, dataset, base = family(job)
    if model != chosen[0]:
        return f"model {model} differs from {chosen[0]} (soups need one pre-trained model)"
    if dataset != chosen[1]:
        return f"dataset {dataset} differs from {chosen[1]}"
    if base != chosen[2]:
        return "different model overrides or pre-training than the chosen jobs"
    return None


def trace_points(soup: Mapping) -> list[dict]:
    """The greedy trace as ``{"step", "ingredient", "score", "accepted"}`` in the order tried."""
    out = []
    for i, row in enumerate(soup.get("trace") or []):
        score = row.get("candidate_score", row.get("score"))
        if score is None:
            continue
        out.append(
            {
                "step": int(row.get("order", i)),
                "ingredient": row.get("job_id", row.get("ingredient")),
                "score": float(score),
                "accepted": bool(row.get("accepted")),
            }
        )
    return sorted(out, key=lambda r: r["step"])


def _result_scores(result: Mapping | None) -> dict[str, float]:
    """In-distribution and per-shift test accuracy from a job's result summary."""
    result = result or {}
    out: dict[str, float] = {}
    acc = result.get("test_acc", result.get("score_in"))
    if acc is not None:
        out[IN_DISTRIBUTION] = float(acc)
    shifts: Any = result.get("shifts") or result.get("scores_out") or {}
    if isinstance(shifts, Mapping):
        for name, value in shifts.items():
            value = value.get("test_acc", value.get("acc")) if isinstance(value, Mapping) else value
            if value is not None:
                out[str(name)] = float(value)
    return out


def soup_scores(soup: Mapping) -> dict[str, float]:
    out = {}
    if soup.get("score_in") is not None:
        out[IN_DISTRIBUTION] = float(soup["score_in"])
    out.update({k: float(v) for k, v in (soup.get("scores_out") or {}).items() if v is not None})
    return out


def best_ingredient(ingredients: Sequence[Mapping]) -> Mapping | None:
    """The ingredient with the best held-out accuracy (the greedy soup's first pick)."""

    def key(job: Mapping) -> float:
        result = job.get("result") or {}
        value = result.get("heldout_acc", result.get("test_acc"))
        return float("-inf") if value is None else float(value)

    scored = [j for j in ingredients if key(j) != float("-inf")]
    return max(scored, key=key) if scored else None


def comparison_scores(
    soup: Mapping, ingredients: Sequence[Mapping], uniform: Mapping | None = None
) -> dict[str, dict[str, float]]:
    """Model label -> evaluation set -> accuracy, for the soup, its best ingredient and the
    uniform soup of the same ingredients (when one was built)."""
    out = {f"{soup.get('method', '')} soup".strip(): soup_scores(soup)}
    best = best_ingredient(ingredients)
    if best is not None:
        out[f"best ingredient (#{best['id']})"] = _result_scores(best.get("result"))
    if uniform is not None and soup.get("method") != "uniform":
        out["uniform soup"] = soup_scores(uniform)
    return {label: scores for label, scores in out.items() if scores}

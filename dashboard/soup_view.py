"""Soup bookkeeping for the Soups page (pure): which jobs may be mixed, and the numbers to plot.

Ingredients must be succeeded fine-tuning jobs of the same pre-trained model and dataset (the
backend enforces it too and names the job that breaks the rule); the page explains it up front.
A job's ``config`` is its fine-tuning spec (`pft.jobs.specs.FinetuneSpec.to_dict()`), its
``result`` the run's summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from contract.api import JobPublic, SoupPublic
from contract.vocab import JobKind, JobStatus

IN_DISTRIBUTION = "in-distribution"


def family(job: JobPublic) -> tuple[str, str, str]:
    """(model, dataset, base) — jobs of one family start from the same pre-trained weights."""
    base = json.dumps(
        {"overrides": job.config["model_overrides"], "pretrained": job.config["pretrained"]},
        sort_keys=True,
    )
    return str(job.model), str(job.dataset), base


def family_label(key: tuple[str, str, str]) -> str:
    """``model / dataset``, plus the overrides or "random init" where they differ from usual."""
    base = json.loads(key[2])
    extra = []
    if base["overrides"]:
        extra.append(", ".join(f"{k}={v}" for k, v in sorted(base["overrides"].items())))
    if not base["pretrained"]:
        extra.append("random init")
    return f"{key[0]} / {key[1]}" + (f" [{'; '.join(extra)}]" if extra else "")


def incompatibility(job: JobPublic, chosen: tuple[str, str, str]) -> str | None:
    """Why ``job`` cannot join a soup of the ``chosen`` family, or None if it can."""
    if job.kind != JobKind.FINETUNE:
        return f"a {job.kind} job; only fine-tuning jobs can be ingredients"
    if job.status != JobStatus.SUCCEEDED:
        return f"{job.status}; only succeeded jobs can be ingredients"
    model, dataset, base = family(job)
    if model != chosen[0]:
        return f"model {model} differs from {chosen[0]} (soups need one pre-trained model)"
    if dataset != chosen[1]:
        return f"dataset {dataset} differs from {chosen[1]}"
    if base != chosen[2]:
        return "different model overrides or pre-training than the chosen jobs"
    return None


def trace_points(soup: SoupPublic) -> list[dict]:
    """A soup's trace as ``{"step", "ingredient", "score", "accepted"}`` in the order tried
    (a trace entry of `pft.soups`: order, ingredient index, job_id, individual_score,
    candidate_score, accepted)."""
    points = [
        {
            "step": int(row["order"]),
            "ingredient": row["job_id"],
            "score": float(row["candidate_score"]),
            "accepted": bool(row["accepted"]),
        }
        for row in soup.trace
    ]
    return sorted(points, key=lambda r: r["step"])


def job_scores(job: JobPublic) -> dict[str, float]:
    """In-distribution and per-shift test accuracy from a fine-tuning job's result summary
    (``test_acc``; ``shifts``: {shift: {"acc", "loss"}})."""
    result = job.result or {}
    out: dict[str, float] = {}
    if result.get("test_acc") is not None:
        out[IN_DISTRIBUTION] = float(result["test_acc"])
    for name, metrics in (result.get("shifts") or {}).items():
        out[str(name)] = float(metrics["acc"])
    return out


def soup_scores(soup: SoupPublic) -> dict[str, float]:
    out = {}
    if soup.score_in is not None:
        out[IN_DISTRIBUTION] = soup.score_in
    return out | dict(soup.scores_out)


def best_ingredient(ingredients: Sequence[JobPublic]) -> JobPublic | None:
    """The ingredient with the best held-out accuracy."""
    scored = [j for j in ingredients if (j.result or {}).get("heldout_acc") is not None]
    return max(scored, key=lambda j: float(j.result["heldout_acc"])) if scored else None


def same_recipe(soup: SoupPublic, others: Sequence[SoupPublic]) -> list[SoupPublic]:
    """The other succeeded soups of exactly the same ingredients (built with other methods)."""
    return [
        o
        for o in others
        if o.id != soup.id
        and o.status == JobStatus.SUCCEEDED
        and sorted(o.ingredients) == sorted(soup.ingredients)
    ]


def comparison_scores(
    soup: SoupPublic, ingredients: Sequence[JobPublic], others: Sequence[SoupPublic] = ()
) -> Mapping[str, dict[str, float]]:
    """Model label -> evaluation set -> accuracy, for the soup, its best ingredient and the
    other soups of the same ingredients (`same_recipe`)."""
    out = {f"{soup.method} soup": soup_scores(soup)}
    best = best_ingredient(ingredients)
    if best is not None:
        out[f"best ingredient (#{best.id})"] = job_scores(best)
    for other in others:
        out[f"{other.method} soup (#{other.id})"] = soup_scores(other)
    return {label: scores for label, scores in out.items() if scores}


def _acc(job: JobPublic | None, key: str) -> str:
    value = ((job.result if job else None) or {}).get(key)
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def lineage_rows(
    ingredient_ids: Sequence[int], jobs: Mapping[int, JobPublic], trace: Sequence[Mapping] = ()
) -> list[dict]:
    """One row per ingredient of a soup, in the order given: where it came from (strategy,
    seed, experiment), how good it was alone, and whether the soup kept it (a greedy soup's
    trace; "—" for methods that keep every ingredient or before the soup was built).
    ``jobs`` holds the ingredients' jobs by id (a missing one shows as "—")."""
    kept = {int(row["job_id"]): bool(row["accepted"]) for row in trace if "job_id" in row}
    rows = []
    for job_id in ingredient_ids:
        job = jobs.get(job_id)
        rows.append(
            {
                "job": job_id,
                "strategy": (job.strategy if job else None) or "—",
                "seed": "—" if job is None or job.seed is None else str(job.seed),
                "experiment": "—"
                if job is None or job.experiment_id is None
                else f"#{job.experiment_id}",
                "held-out acc": _acc(job, "heldout_acc"),
                "test acc": _acc(job, "test_acc"),
                "in soup": ("yes" if kept[job_id] else "no") if job_id in kept else "—",
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# mixing weights and the lineage graph


def _tuned_every_parameter(job: JobPublic) -> bool:
    """Whether the job tuned every parameter (the only jobs that tune the stem and final norm)."""
    return job.tuned_params is not None and job.tuned_params == job.total_params


def _tuned_units(job: JobPublic | None) -> set[str]:
    """The units a fine-tuning job tuned (``result["strategy"]["units"]``, the run's selection)."""
    strategy = ((job.result if job else None) or {}).get("strategy") or {}
    return {str(u) for u in strategy.get("units") or ()}


def mixing_matrix(soup: SoupPublic, jobs: Mapping[int, JobPublic]) -> dict | None:
    """A merge's per-unit mixing weights as a units x ingredients matrix, or None for a soup
    without any (`contract.api.SoupOutcome.mixing`).

    Row ``u``, column ``i`` holds unit ``u``'s weight where ingredient ``i`` tuned ``u`` (its
    run's selection), None where it did not. Groups outside the units (head, stem, final norm)
    were tuned by every ingredient when the record says so, else by those that tuned every
    parameter. Returns ``{"weight" (what a weight means), "units", "ingredients" (job ids),
    "z", "tuners" (per unit: how many ingredients tuned it)}``.
    """
    units = (soup.mixing or {}).get("units") or {}
    if not units:
        return None
    ids = list(soup.ingredients)
    tuned = {i: _tuned_units(jobs.get(i)) for i in ids}
    listed = set().union(*tuned.values())
    everything = [i for i in ids if i in jobs and _tuned_every_parameter(jobs[i])]
    z, tuners = [], []
    for group, row in units.items():
        count = int(row.get("ingredients", 0))
        if group in listed:
            members = {i for i in ids if group in tuned[i]}
        else:
            members = set(ids) if count == len(ids) else set(everything)
        weight = row.get("weight")
        z.append([float(weight) if i in members and weight is not None else None for i in ids])
        tuners.append(count)
    return {
        "weight": str(soup.mixing.get("weight", "weight")),
        "units": list(units),
        "ingredients": ids,
        "z": z,
        "tuners": tuners,
    }


def mixing_notes(soup: SoupPublic) -> str:
    """The method's own values next to its weights (a chosen scale, a density), in words."""
    scalars = {
        k: v
        for k, v in (soup.mixing or {}).items()
        if k not in ("units", "weight") and isinstance(v, int | float | str | bool)
    }
    return ", ".join(
        f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in scalars.items()
    )


def lineage_graph(
    soup_job: JobPublic, jobs: Mapping[int, JobPublic], trace: Sequence[Mapping] = ()
) -> dict:
    """Ingredients -> soup as nodes and edges: ingredients on the left in the soup's order, the
    soup on the right; an edge is ``kept`` True/False (a greedy soup's verdict) or None
    (methods that keep every ingredient, or a soup not built yet).

    Returns ``{"nodes": [{"id", "label", "x", "y", "kind" ("ingredient"/"soup"), "hover"}],
    "edges": [{"source", "target", "kept"}]}``.
    """
    ids = [int(i) for i in soup_job.config["ingredients"]]
    kept = {int(row["job_id"]): bool(row["accepted"]) for row in trace if "job_id" in row}
    nodes, edges = [], []
    for k, job_id in enumerate(ids):
        job = jobs.get(job_id)
        strategy = (job.strategy if job else None) or "—"
        seed = "" if job is None or job.seed is None else f" · seed {job.seed}"
        nodes.append(
            {
                "id": job_id,
                "label": f"#{job_id} {strategy}{seed}",
                "x": 0.0,
                "y": float(len(ids) - 1 - k),
                "kind": "ingredient",
                "hover": f"job {job_id}: {strategy}{seed}<br>held-out {_acc(job, 'heldout_acc')}"
                f" · test {_acc(job, 'test_acc')}",
            }
        )
        edges.append({"source": job_id, "target": soup_job.id, "kept": kept.get(job_id)})
    method = soup_job.config["method"]
    nodes.append(
        {
            "id": soup_job.id,
            "label": f"soup #{soup_job.id} ({method})",
            "x": 1.0,
            "y": (len(ids) - 1) / 2,
            "kind": "soup",
            "hover": f"soup {soup_job.id}: {method} of {len(ids)} · {soup_job.status}",
        }
    )
    return {"nodes": nodes, "edges": edges}

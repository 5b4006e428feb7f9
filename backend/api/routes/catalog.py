"""``/catalog/*``: the models, datasets, shifts and strategies a job may use (torch-free)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pft import dataset_catalog, strategies
from pft.model_catalog import CATALOG, shape_table

router = APIRouter(prefix="/catalog", tags=["catalog"])


@router.get("/models")
def models() -> list[dict[str, Any]]:
    """Catalogue models (any timm model name is accepted too); ``unit_preview`` says whether
    ``GET /models/{model}/units`` can answer for it now."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "source": spec.source,
            "timm_name": spec.timm_name,
            "overrides": spec.overrides,
            "unit_preview": shape_table(spec) is not None,
        }
        for spec in CATALOG.values()
    ]


@router.get("/datasets")
def datasets() -> dict[str, Any]:
    """Datasets (with class counts) and the distribution shifts for out-of-distribution tests."""
    return dataset_catalog.catalogue()


@router.get("/strategies")
def strategy_catalogue() -> list[dict[str, Any]]:
    """Strategies with their parameters. For ``angle_topk`` the API takes ``reference_job``
    (a succeeded full fine-tuning job) instead of raw angles."""
    out = []
    for entry in strategies.catalogue():
        params = [p for p in entry["params"] if p.get("kind") != "angles"]
        if entry["name"] == "angle_topk":
            params.append(
                {
                    "name": "reference_job",
                    "kind": "job",
                    "description": "id of a succeeded full fine-tuning job of the same model "
                    "and dataset; its final per-unit angles rank the units",
                }
            )
        out.append({**entry, "params": params})
    return out

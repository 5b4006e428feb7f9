"""``/catalog/*``: the models, datasets, shifts, strategies and soup methods a job may use,
each from its registry (torch-free)."""

from __future__ import annotations

from fastapi import APIRouter

from contract.api import DatasetsCatalog, ModelPublic, RegistryEntry
from pft import dataset_catalog, strategies
from pft.model_catalog import CATALOG, shape_table
from pft.soups import registry as merges

router = APIRouter(prefix="/catalog", tags=["catalog"])


@router.get("/models", response_model=list[ModelPublic])
def models() -> list[ModelPublic]:
    """Catalogue models (any timm model name is accepted too); ``unit_preview`` says whether
    ``GET /models/{model}/units`` can answer for it now."""
    return [
        ModelPublic(
            name=spec.name,
            description=spec.description,
            source=spec.source,
            timm_name=spec.timm_name,
            overrides=spec.overrides,
            unit_preview=shape_table(spec) is not None,
        )
        for spec in CATALOG.values()
    ]


@router.get("/datasets", response_model=DatasetsCatalog)
def datasets() -> DatasetsCatalog:
    """Datasets (with class counts) and the distribution shifts for out-of-distribution tests."""
    return DatasetsCatalog.model_validate(dataset_catalog.catalogue())


@router.get("/strategies", response_model=list[RegistryEntry])
def strategy_catalogue() -> list[RegistryEntry]:
    """Strategies with the parameters a request may give (``POST /jobs``, ``POST /preview``)."""
    return [RegistryEntry.model_validate(entry) for entry in strategies.catalogue()]


@router.get("/soups", response_model=list[RegistryEntry])
def soup_catalogue() -> list[RegistryEntry]:
    """Merge methods for ``POST /soups`` with their parameters."""
    return [RegistryEntry.model_validate(entry) for entry in merges.catalogue()]

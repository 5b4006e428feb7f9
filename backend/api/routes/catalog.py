"""``/catalog/*``: the models, datasets, shifts, strategies, soup methods, selection criteria
and training hyperparameters a job may use, each from its registry or request schema
(torch-free)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic.fields import FieldInfo

from backend.schemas import HparamsCreate
from contract.api import CriterionEntry, DatasetsCatalog, ModelPublic, ParamPublic, RegistryEntry
from pft import dataset_catalog, strategies
from pft.criteria import registry as criteria
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


@router.get("/criteria", response_model=list[CriterionEntry])
def criterion_catalogue() -> list[CriterionEntry]:
    """Selection criteria (per-unit scores) with their parameters and cost; those without
    ``needs_reference`` run as ``rank`` jobs (``POST /jobs``)."""
    return [CriterionEntry.model_validate(entry) for entry in criteria.catalogue()]


_KINDS = {bool: "bool", int: "int", float: "float"}  # bool first: a bool is an int too


def _hparam(name: str, info: FieldInfo) -> ParamPublic:
    """One field of `backend.schemas.HparamsCreate` as a catalogue parameter: its kind, default
    and the bounds its validators enforce (``ge``/``gt``/``le``/``lt``)."""
    bounds: dict[str, Any] = {}
    for rule in info.metadata:  # annotated_types.Ge / Gt / Le / Lt
        for attr, side, exclusive in (
            ("ge", "minimum", False),
            ("gt", "minimum", True),
            ("le", "maximum", False),
            ("lt", "maximum", True),
        ):
            if getattr(rule, attr, None) is not None:
                bounds[side] = float(getattr(rule, attr))
                bounds[f"exclusive_{side}"] = exclusive
    kind = next((k for t, k in _KINDS.items() if info.annotation is t), "text")
    return ParamPublic(
        name=name,
        kind=kind,
        description=info.description or "",
        default=info.get_default(call_default_factory=True),
        **bounds,
    )


@router.get("/hparams", response_model=RegistryEntry)
def hparam_catalogue() -> RegistryEntry:
    """The training hyperparameters of a fine-tuning job or experiment (``hparams`` of
    ``POST /jobs`` and ``POST /experiments``) with their defaults and accepted ranges, read
    from the request schema that enforces them."""
    return RegistryEntry(
        name="hparams",
        description=(HparamsCreate.__doc__ or "").strip(),
        params=[_hparam(n, f) for n, f in HparamsCreate.model_fields.items()],
    )

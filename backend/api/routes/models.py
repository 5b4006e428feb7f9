"""``GET /models``: the model picker (catalogue models, or those matching a pattern, mapped or
refused with the reason); ``GET /models/{model}/units``: a model's unit map and what every
strategy without parameters tunes on it, before launch (strategies with parameters:
``POST /preview``).

Model names contain ``/`` (``pft/vit-tiny-fmnist``), so the path parameter takes the rest of the
path up to ``/units``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from backend.api.deps import SessionDep
from backend.submit import InvalidRequest
from backend.unit_maps import lookup_unit_map
from contract.api import ModelRow, ModelsPage, SelectionPublic, UnitMapPublic, UnitsPreview
from pft.errors import PftError
from pft.model_picker import list_models
from pft.strategies import STRATEGIES, resolve_strategy

router = APIRouter(prefix="/models", tags=["models"])
ClassesQuery = Annotated[int, Query(ge=1, le=100_000, description="classes of the task")]


@router.get("", response_model=ModelsPage)
def models(
    session: SessionDep,
    pattern: Annotated[
        str | None,
        Query(
            max_length=200,
            description="shell-style pattern over catalogue and timm names, e.g. 'swin*'; "
            "none: the catalogue",
        ),
    ] = None,
    num_classes: ClassesQuery = 10,
) -> ModelsPage:
    """Which models the lab can fine-tune: each mapped (depth, groups, tuned parameters per
    strategy) or refused with the reason, from shape tables; nothing is built. A model no worker
    has loaded yet is listed with ``mapped: null``."""

    def lookup(model: str, classes: int):  # noqa: ANN202 (a UnitMap or None)
        return lookup_unit_map(session, model=model, num_classes=classes)

    try:
        rows = list_models(pattern, num_classes=num_classes, lookup=lookup)
    except PftError as exc:
        raise InvalidRequest(("query", exc.field or "pattern"), str(exc)) from None
    return ModelsPage(items=[ModelRow.model_validate(r) for r in rows])


@router.get(
    "/{model:path}/units",
    response_model=UnitsPreview,
    responses={404: {"description": "unknown model, or no shape table for it yet"}},
)
def units(
    model: str,
    session: SessionDep,
    num_classes: ClassesQuery = 10,
) -> UnitsPreview:
    """Units, groups and parameter counts; tuned parameters of every strategy that takes no
    parameter."""
    try:
        um = lookup_unit_map(session, model=model, num_classes=num_classes)
    except PftError as exc:
        raise HTTPException(404, str(exc)) from None
    if um is None:
        raise HTTPException(
            404,
            f"no unit map for {model!r} yet: its shape table is computed the first time a "
            f"worker loads the model (or run `pft units {model}`)",
        )
    selections = [
        SelectionPublic.model_validate(resolve_strategy(um, s.name).to_dict(s.description))
        for s in STRATEGIES.values()
        if not s.params
    ]
    return UnitsPreview(unit_map=UnitMapPublic.model_validate(um.to_dict()), strategies=selections)

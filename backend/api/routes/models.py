"""``GET /models/{model}/units``: the unit map and tuned parameters per strategy, before launch.

Model names contain ``/`` (``pft/vit-tiny-fmnist``), so the path parameter takes the rest of the
path up to ``/units``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from backend.api.deps import SessionDep
from backend.unit_maps import lookup_unit_map
from pft.errors import PftError
from pft.strategies import STRATEGIES, resolve_strategy

router = APIRouter(prefix="/models", tags=["models"])

_NO_PARAMS = [s.name for s in STRATEGIES.values() if not s.params]


@router.get(
    "/{model:path}/units",
    responses={404: {"description": "unknown model, or no shape table for it yet"}},
)
def units(
    model: str,
    session: SessionDep,
    num_classes: Annotated[int, Query(ge=1, le=100_000, description="classes of the task")] = 10,
) -> dict[str, Any]:
    """Units, groups and parameter counts; tuned parameters for every strategy without
    parameters, and for ``angle_topk`` per ``k`` (units of a group have equal sizes)."""
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
    previews = [
        resolve_strategy(um, name).to_dict(STRATEGIES[name].description) for name in _NO_PARAMS
    ]
    flat = dict.fromkeys(um.unit_names, 0.0)  # equal angles: counts do not depend on the ranking
    max_k = min(len(us) for us in um.groups.values())
    by_k = {
        k: resolve_strategy(um, "angle_topk", k=k, angles=flat).tuned_params
        for k in range(1, max_k + 1)
    }
    return {
        "unit_map": um.to_dict(),
        "strategies": previews,
        "angle_topk": {"max_k": max_k, "tuned_params_by_k": by_k},
    }

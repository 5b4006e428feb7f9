"""``POST /preview``: what one strategy would tune on one model, before anything is submitted.

The dashboard's unit grid and tuned-parameter counts come from here, so they are the API's
own resolution of the strategy. A parameter the lab fills (a reference job's angles) that was
not given yet makes a provisional answer: exact counts, placeholder unit names.
"""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import SessionDep
from backend.schemas import PreviewCreate
from backend.submit import InvalidRequest, param_loc, reference_filler, run_unit_map
from contract.api import SelectionPublic
from pft.errors import PftError
from pft.strategies import get_strategy, prepare_params, preview_strategy

router = APIRouter(tags=["preview"])


@router.post(
    "/preview",
    response_model=SelectionPublic,
    responses={422: {"description": "a bad name or parameter, or no shape table yet"}},
)
def preview(request: PreviewCreate, session: SessionDep) -> SelectionPublic:
    """The units and tensors ``strategy`` tunes on ``model`` with ``dataset``'s head."""
    loc = ("body", "strategy")
    strategy = get_strategy(request.strategy.name)
    given = request.strategy.params()
    um, _ = run_unit_map(session, request)
    if um is None:
        raise InvalidRequest(
            ("body", "model"),
            f"no shape table for {request.model!r} yet: it is computed the first time a worker "
            f"loads the model (or run `pft units {request.model}`)",
        )
    try:
        filled = {p.name for p in strategy.params if p.fills and p.name in given}
        if filled:
            given = prepare_params(
                strategy.name, given, fill=reference_filler(session, request, loc)
            )
        selection = preview_strategy(um, strategy.name, **given)
    except PftError as exc:
        raise InvalidRequest(param_loc(strategy.name, exc, loc), str(exc)) from None
    return SelectionPublic.model_validate(selection.to_dict(strategy.description))

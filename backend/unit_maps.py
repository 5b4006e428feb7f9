"""Unit maps for the API, without torch: shipped or cached shape tables, then the database.

`pft.model_catalog.unit_map_for(..., compute=False)` covers the shipped tables and those cached
in this host's data folder; a worker on another host stores the tables it computes in the
``shape_tables`` table (`crud.store_shape_table`), which is the fallback here.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy.orm import Session

from backend import crud
from pft.model_catalog import get_spec, named_shapes_from_table, shape_key, unit_map_for
from pft.units import UnitMap, build_unit_map

_CACHE: dict[tuple[str, str, int], UnitMap] = {}  # only hits: a table may appear later
_LOCK = threading.Lock()


def lookup_unit_map(
    session: Session, *, model: str, num_classes: int, overrides: dict[str, Any] | None = None
) -> UnitMap | None:
    """The unit map of ``model`` with ``num_classes`` outputs; None if no shape table exists yet.

    Raises PftError for unknown models or overrides.
    """
    key = (model, json.dumps(overrides or {}, sort_keys=True), num_classes)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    try:
        um = unit_map_for(model, num_classes, overrides or None, compute=False)
    except LookupError:
        table = crud.get_shape_table(session, key=shape_key(get_spec(model, overrides)))
        if table is None:
            return None
        shapes = named_shapes_from_table(table, num_classes)
        um = build_unit_map(shapes, model=model, num_classes=num_classes)
    with _LOCK:
        _CACHE[key] = um
    return um

"""Unit maps for the API, without torch: shipped or cached shape tables, then the database.

`pft.model_catalog.unit_map_for(..., compute=False)` covers the shipped tables and those cached
in this host's data folder; a worker on another host reports the tables it computes
(``PUT /worker/shape-tables``, the ``shape_tables`` table), which is the fallback here.

Found maps are kept in a small LRU cache (any timm name with any overrides and class count may
be asked for, so the cache is bounded); misses are not cached, since a table may appear later.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy.orm import Session

from backend import crud
from pft.model_catalog import get_spec, named_shapes_from_table, shape_key, unit_map_for
from pft.units import UnitMap, build_unit_map

CACHE_SIZE = 256
_Key = tuple[str, str, int]


class _LRU:
    """A thread-safe least-recently-used map of at most ``maxsize`` entries."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[_Key, UnitMap] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _Key) -> UnitMap | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: _Key, value: UnitMap) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = _LRU(CACHE_SIZE)


def lookup_unit_map(
    session: Session, *, model: str, num_classes: int, overrides: dict[str, Any] | None = None
) -> UnitMap | None:
    """The unit map of ``model`` with ``num_classes`` outputs; None if no shape table exists yet.

    Raises PftError for unknown models or overrides.
    """
    key = (model, json.dumps(overrides or {}, sort_keys=True), num_classes)
    um = CACHE.get(key)
    if um is not None:
        return um
    try:
        um = unit_map_for(model, num_classes, overrides or None, compute=False)
    except LookupError:
        table = crud.get_shape_table(session, key=shape_key(get_spec(model, overrides)))
        if table is None:
            return None
        shapes = named_shapes_from_table(table, num_classes)
        um = build_unit_map(shapes, model=model, num_classes=num_classes)
    CACHE.put(key, um)
    return um

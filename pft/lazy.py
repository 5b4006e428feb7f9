"""Functions named by ``"module:function"`` in the torch-free catalogues, imported on use.

The dataset and shift catalogues (`pft.dataset_catalog`) name their loaders and corruptions
this way so that they stay plain data; the modules that run them (`pft.datasets`,
`pft.shifts`) resolve the names, so the catalogue never imports them back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def load_function(target: str) -> Callable[..., Any]:
    """The function ``target`` (``"package.module:function"``) names."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{target!r} does not name a function as 'module:function'")
    return getattr(importlib.import_module(module), name)

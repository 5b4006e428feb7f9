"""Widgets for a registry entry's parameters (a strategy, a merge method), derived from the
catalogue (`contract.api.ParamPublic`) by the parameter's ``kind``, so that a parameter added
to a registry appears here without a dashboard change.

| kind | widget |
|---|---|
| ``int``, ``float`` | number input within ``minimum``/``maximum``, starting at ``default`` |
| ``choice`` | radio over ``choices`` |
| ``units`` | multiselect over the model's units |
| ``job`` | selectbox over the jobs the page offers (nothing to pick: a note, no value) |

Widget keys are ``<prefix>-<parameter name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import streamlit as st

from contract.api import JobPublic, ParamPublic, RegistryEntry
from dashboard.ui import job_label

Widget = Callable[..., Any]


def _label(param: ParamPublic) -> str:
    return f"{param.name}: {param.description}" if param.description else param.name


def _number(where: Any, param: ParamPublic, key: str, cast: type) -> Any:
    low = None if param.minimum is None else cast(param.minimum)
    high = None if param.maximum is None else cast(param.maximum)
    start = param.default if param.default is not None else (low if low is not None else 0)
    return where.number_input(
        _label(param),
        min_value=low,
        max_value=high,
        value=cast(start),
        step=cast(1) if cast is int else None,
        format=None if cast is int else "%g",
        key=key,
    )


def _choice(where: Any, param: ParamPublic, key: str) -> str:
    index = param.choices.index(param.default) if param.default in param.choices else 0
    return where.radio(_label(param), param.choices, index=index, key=key, horizontal=True)


def param_widgets(
    entry: RegistryEntry,
    *,
    prefix: str,
    units: Sequence[str] = (),
    jobs: Sequence[JobPublic] = (),
    fixed: Mapping[str, Any] | None = None,
    no_jobs: str = "no finished job to pick yet",
) -> dict[str, Any]:
    """One widget per parameter of ``entry`` not in ``fixed`` (values the page sets itself),
    side by side; returns the given values (``fixed`` included), ready for a request body.
    ``no_jobs`` says why a ``job`` parameter has nothing to offer."""
    fixed = dict(fixed or {})
    shown = [p for p in entry.params if p.name not in fixed]
    values: dict[str, Any] = dict(fixed)
    for where, param in zip(st.columns(len(shown)) if shown else [], shown, strict=True):
        key = f"{prefix}-{param.name}"
        if param.kind == "int":
            values[param.name] = int(_number(where, param, key, int))
        elif param.kind == "float":
            values[param.name] = float(_number(where, param, key, float))
        elif param.kind == "choice":
            values[param.name] = _choice(where, param, key)
        elif param.kind == "units":
            default = [u for u in param.default or [] if u in units]
            values[param.name] = where.multiselect(_label(param), units, default, key=key)
        elif param.kind == "job":
            if jobs:
                labels = {j.id: job_label(j) for j in jobs}
                values[param.name] = where.selectbox(
                    _label(param), list(labels), key=key, format_func=labels.get
                )
            else:
                where.info(f"{param.name}: {no_jobs} ({param.description}).")
        else:  # a kind this dashboard does not know: the API validates the text
            text = where.text_input(_label(param), key=key)
            if text:
                values[param.name] = text
    return values


def takes_a_job(entry: RegistryEntry) -> ParamPublic | None:
    """The entry's parameter that names a job (a reference run), if it has one."""
    return next((p for p in entry.params if p.kind == "job"), None)

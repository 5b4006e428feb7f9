"""Widgets for a registry entry's parameters (a strategy, a merge method, the training
hyperparameters of ``/catalog/hparams``), derived from the catalogue
(`contract.api.ParamPublic`) by the parameter's ``kind``, so that a parameter added to a
registry or to the API's request schema appears here without a dashboard change.

| kind | widget |
|---|---|
| ``int``, ``float`` | number input at ``default``, its accepted range in the label (1) |
| ``bool`` | checkbox |
| ``choice`` | radio over ``choices`` |
| ``units`` | multiselect over the model's units |
| ``job`` | selectbox over the jobs the page offers (nothing to pick: a note, no value) |

(1) An optional parameter without a default starts empty and, left empty, is not sent.

Numbers arrive as typed: the widgets do not clamp (a browser would silently keep the last valid
value), so a value outside the catalogue's range is shown as an error naming the parameter and
its accepted range (`check_value`), and the page keeps its submit button disabled while
`Filled.problems` is not empty. The API checks the same bounds again.

Widget keys are ``<prefix>-<parameter name>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from contract.api import JobPublic, ParamPublic, RegistryEntry
from dashboard.ui import job_label

Widget = Callable[..., Any]
NUMBER_KINDS = ("int", "float")


@dataclass
class Filled:
    """What a set of parameter widgets holds: the values (ready for a request body) and, per
    parameter, why its value is refused (empty when every value is acceptable)."""

    values: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _num(x: float) -> str:
    return f"{x:g}"


def interval(param: ParamPublic) -> str:
    """The accepted range in interval notation: ``[1, 1000]``, ``(0, 1]``, ``[0, ∞)``; ``""``
    for a parameter without bounds."""
    low, high = param.minimum, param.maximum
    if low is None and high is None:
        return ""
    left = "(-∞" if low is None else ("(" if param.exclusive_minimum else "[") + _num(low)
    right = "∞)" if high is None else _num(high) + (")" if param.exclusive_maximum else "]")
    return f"{left}, {right}"


def accepted(param: ParamPublic) -> str:
    """The accepted values in words: ``a whole number from 1 to 1000``, ``a number greater
    than 0 and at most 1``."""
    what = "a whole number" if param.kind == "int" else "a number"
    low, high = param.minimum, param.maximum
    if (
        low is not None
        and high is not None
        and not (param.exclusive_minimum or param.exclusive_maximum)
    ):
        return f"{what} from {_num(low)} to {_num(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'greater than' if param.exclusive_minimum else 'at least'} {_num(low)}")
    if high is not None:
        parts.append(f"{'less than' if param.exclusive_maximum else 'at most'} {_num(high)}")
    return " ".join([what, " and ".join(parts)]).strip()


def check_value(param: ParamPublic, value: Any) -> str | None:
    """Why ``value`` is not accepted for the number parameter ``param`` (its kind and range),
    or None when it is."""
    if value is None:
        return f"{param.name} must be {accepted(param)}, got nothing"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{param.name} must be {accepted(param)}, got {value!r}"
    shown = f"{param.name} must be {accepted(param)}, got {_num(value)}"
    if not math.isfinite(value) or (param.kind == "int" and float(value) != int(value)):
        return shown
    low, high = param.minimum, param.maximum
    if low is not None and (value <= low if param.exclusive_minimum else value < low):
        return shown
    if high is not None and (value >= high if param.exclusive_maximum else value > high):
        return shown
    return None


def _label(param: ParamPublic) -> str:
    label = f"{param.name}: {param.description}" if param.description else param.name
    bounds = interval(param) if param.kind in NUMBER_KINDS else ""
    return f"{label} {bounds}" if bounds else label


def optional(param: ParamPublic) -> bool:
    """A parameter the request may leave out: an empty box, nothing sent."""
    return param.default is None and not param.required


def _number(where: Any, param: ParamPublic, key: str) -> Any:
    cast = int if param.kind == "int" else float
    start = param.default
    if start is None and not optional(param):
        start = param.minimum if param.minimum is not None and not param.exclusive_minimum else 0
    return where.number_input(  # no min_value / max_value: the value arrives as typed
        _label(param) + (" (optional)" if optional(param) else ""),
        value=None if start is None else cast(start),
        step=1 if cast is int else None,
        format=None if cast is int else "%g",
        help=f"accepted: {accepted(param)}",
        key=key,
    )


def _choice(where: Any, param: ParamPublic, key: str) -> str:
    index = param.choices.index(param.default) if param.default in param.choices else 0
    return where.radio(_label(param), param.choices, index=index, key=key, horizontal=True)


def _rows(count: int, columns: int | None) -> list[Any]:
    """``count`` places side by side, ``columns`` per row (all in one row when None)."""
    per_row = max(1, columns or count)
    out: list[Any] = []
    for start in range(0, count, per_row):
        out += st.columns(per_row)[: min(per_row, count - start)]
    return out


def param_widgets(
    entry: RegistryEntry,
    *,
    prefix: str,
    units: Sequence[str] = (),
    jobs: Sequence[JobPublic] = (),
    fixed: Mapping[str, Any] | None = None,
    no_jobs: str = "no finished job to pick yet",
    columns: int | None = None,
) -> Filled:
    """One widget per parameter of ``entry`` not in ``fixed`` (values the page sets itself),
    side by side (``columns`` per row); returns the given values (``fixed`` included), ready for
    a request body, and the problems of those that are refused (each also shown under its
    widget). ``no_jobs`` says why a ``job`` parameter has nothing to offer."""
    fixed = dict(fixed or {})
    shown = [p for p in entry.params if p.name not in fixed]
    out = Filled(values=dict(fixed))
    values = out.values
    for where, param in zip(_rows(len(shown), columns), shown, strict=True):
        key = f"{prefix}-{param.name}"
        if param.kind in NUMBER_KINDS:
            value = _number(where, param, key)
            if value is None and optional(param):
                continue  # left empty: the API's default applies
            problem = check_value(param, value)
            if problem:
                out.problems[param.name] = problem
                where.error(problem)
                values[param.name] = value
            else:
                values[param.name] = int(value) if param.kind == "int" else float(value)
        elif param.kind == "bool":
            values[param.name] = where.checkbox(_label(param), value=bool(param.default), key=key)
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
    return out


def takes_a_job(entry: RegistryEntry) -> ParamPublic | None:
    """The entry's parameter that names a job (a reference run), if it has one."""
    return next((p for p in entry.params if p.kind == "job"), None)

"""The strategy registry: rules that say which units a partial fine-tuning run tunes (torch-free).

Ye et al. (arXiv 2312.15681) compare full fine-tuning, linear probing and eight manual
strategies, {ATTN, FFN, ATTN+FFN} x {all blocks, first half, last half} minus full, and
propose FAPFT: tune the top-K units of each homogeneous group ranked by fine-tuned angle
(``angle_topk``; largest angles for hard tasks, smallest for easy ones). ``custom`` tunes an
explicit set of units.

Every strategy tunes the head. The stem (patch embedding, tokens, position embedding) and the
final norm are tuned only by ``full``. With an odd depth D, the "first half" is the first
floor(D/2) blocks and the "last half" the remaining ceil(D/2). A model whose blocks have one
residual branch (ConvNeXt: one ``BLOCK`` unit per block) has no ATTN or FFN units: the
ATTN/FFN strategies refuse it naming the strategies that apply (``full``, ``linear_probe``,
``blocks_first_half``, ``blocks_last_half``, ``angle_topk``, ``custom``).

``angle_topk`` tunes K units per group: ``k`` for every group (a K larger than a group takes the
whole group; the preview says so), or ``k_groups``: a fraction of each group (``0.5``: half of
each group, rounded, at least one unit) or ``{group: k}`` for every group. ``criterion_topk``
is the same selection over per-unit ``scores`` from any selection criterion (`pft.criteria`:
relative gradient norm, Fisher information, angles of a short run; `pft rank` prints them),
largest first by default; ``angle_topk`` stays the paper's name for the angle case.

A strategy declares its parameters (`StrategyParam`: kind, range, default, help) and checks
them itself; everything else (the API's request schema and catalogue, the CLI's options, the
dashboard's widgets) is derived from these declarations. A parameter may be *filled* by the
lab: ``reference_job`` names a job whose final unit angles become ``angles``
(`prepare_params`), so the stored job spec is self-contained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pft.errors import PftError, unknown_name
from pft.units import UnitMap

ORDERS = ("largest", "smallest")
FULL_FINETUNING = "full"  # tunes every tensor: pre-training and reference runs use it
DEFAULT_STRATEGY = FULL_FINETUNING
PARAM_KINDS = ("int", "float", "choice", "units", "angles", "job", "group_k")


@dataclass(frozen=True)
class StrategyParam:
    """One parameter of a strategy, as a request schema, a CLI option and a widget need it."""

    name: str
    kind: str  # one of PARAM_KINDS
    description: str
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    # True: the bound itself is refused (``lr > 0``); bounds are inclusive otherwise.
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    public: bool = True  # False: the lab fills it (never asked from a user, never shown)
    fills: str | None = None  # the parameter that `prepare_params` derives from this one
    # A model-dependent value that UIs and `pft strategies` suggest when none is given.
    suggest: Callable[[UnitMap], Any] | None = field(default=None, repr=False, compare=False)
    # A model-dependent upper bound (k: the units of the smallest group), checked with a map.
    maximum_for: Callable[[UnitMap], float] | None = field(default=None, repr=False, compare=False)

    def check(self, value: Any, um: UnitMap | None = None) -> Any:
        """``value`` checked against the declared kind and range (and the unit map, when one is
        given); returns it normalised. Raises PftError naming this parameter."""
        p = self
        if um is not None and self.maximum_for is not None:
            p = replace(self, maximum=self.maximum_for(um))
        return _KIND_CHECKS[self.kind](p, value, um)

    def public_dict(self) -> dict[str, Any]:
        """The parameter as `contract.api.ParamPublic` describes it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "default": self.default,
            "choices": list(self.choices),
            "minimum": self.minimum,
            "maximum": self.maximum,
            "required": self.required,
            "exclusive_minimum": self.exclusive_minimum,
            "exclusive_maximum": self.exclusive_maximum,
        }

    def _fail(self, accepted: str, value: Any) -> PftError:
        return PftError(f"{self.name} must be {accepted}, got {value!r}", field=self.name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(p: StrategyParam, value: Any, integer: bool) -> int | float:
    ok = _is_int(value) if integer else (_is_int(value) or isinstance(value, float))
    low = p.minimum if p.minimum is not None else None
    high = p.maximum if p.maximum is not None else None
    what = "an integer" if integer else "a number"
    above, below = (">" if p.exclusive_minimum else ">="), ("<" if p.exclusive_maximum else "<=")
    if low is not None and high is not None and not (p.exclusive_minimum or p.exclusive_maximum):
        what += f" from {low:g} to {high:g}"
    elif low is not None and high is not None:
        what += f" {above} {low:g} and {below} {high:g}"
    elif low is not None:
        what += f" {above} {low:g}"
    elif high is not None:
        what += f" {below} {high:g}"
    if not ok:
        raise p._fail(what, value)
    too_low = low is not None and (value <= low if p.exclusive_minimum else value < low)
    too_high = high is not None and (value >= high if p.exclusive_maximum else value > high)
    if too_low or too_high:
        raise p._fail(what, value)
    return value if integer else float(value)


def _check_choice(p: StrategyParam, value: Any, _: UnitMap | None) -> str:
    if value not in p.choices:
        raise p._fail(f"one of {', '.join(p.choices)}", value)
    return value


def _check_units(p: StrategyParam, value: Any, um: UnitMap | None) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(u, str) for u in value):
        raise p._fail("a list of unit names such as 'ATTN.0' or 'FFN.3'", value)
    if um is None:
        return list(value)
    for u in value:
        try:
            um.unit(u)
        except PftError as exc:  # names the accepted range
            raise PftError(str(exc), field=p.name) from None
    return sorted(set(value), key=um.unit_names.index)


def _check_angles(p: StrategyParam, value: Any, um: UnitMap | None) -> dict[str, float]:
    """A number per unit (angles in degrees, or a criterion's scores)."""
    if not isinstance(value, Mapping):
        raise PftError(f"{p.name} must map unit names to numbers: {p.description}", field=p.name)
    if um is None:
        return dict(value)
    for name in um.unit_names:
        if name not in value:
            raise PftError(f"{p.name} are missing unit {name!r}", field=p.name)
    return {n: float(value[n]) for n in um.unit_names}


def _check_job(p: StrategyParam, value: Any, _: UnitMap | None) -> int:
    if not _is_int(value) or value < 1:
        raise p._fail("a job id (an integer >= 1)", value)
    return value


def _check_group_k(p: StrategyParam, value: Any, um: UnitMap | None) -> float | dict[str, int]:
    """A fraction in (0, 1] of each group, or {group: k >= 1} naming every group; text (from a
    form) is read as JSON."""
    accepted = "a fraction in (0, 1] of each group, or a mapping {group: k} with k >= 1"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise p._fail(accepted, value) from None
    if (_is_int(value) or isinstance(value, float)) and not isinstance(value, bool):
        if not 0 < value <= 1:
            raise p._fail(accepted, value)
        return float(value)
    if not isinstance(value, Mapping) or not all(
        isinstance(g, str) and _is_int(k) and k >= 1 for g, k in value.items()
    ):
        raise p._fail(accepted, value)
    if um is not None:
        groups = list(um.groups)
        unknown = [g for g in value if g not in groups]
        missing = [g for g in groups if g not in value]
        if unknown or missing:
            what = f"unknown group {unknown[0]!r}" if unknown else f"group {missing[0]!r} missing"
            raise PftError(
                f"{p.name}: {what}; the groups of {um.model} are {', '.join(groups)}",
                field=p.name,
            )
        return {g: int(value[g]) for g in groups}
    return dict(value)


_KIND_CHECKS: dict[str, Callable[[StrategyParam, Any, UnitMap | None], Any]] = {
    "int": lambda p, v, _: _check_number(p, v, integer=True),
    "float": lambda p, v, _: _check_number(p, v, integer=False),
    "choice": _check_choice,
    "units": _check_units,
    "angles": _check_angles,
    "job": _check_job,
    "group_k": _check_group_k,
}


def _unknown_param(owner: str, declared: tuple[StrategyParam, ...], name: str) -> PftError:
    accepted = ", ".join(p.name for p in declared) or "none"
    return PftError(f"{owner} takes no parameter {name!r}; accepted: {accepted}", field=name)


def check_params(
    owner: str,
    declared: tuple[StrategyParam, ...],
    given: Mapping[str, Any] | None,
    um: UnitMap | None = None,
    *,
    missing: Callable[[StrategyParam], PftError] | None = None,
) -> dict[str, Any]:
    """``given`` checked against the ``declared`` parameters of ``owner`` (a strategy, a soup
    method), defaults filled in; PftError with ``field`` for an unknown, bad or missing one
    (``missing(param)`` builds the error for a required parameter without a value)."""
    given = dict(given or {})
    known = {p.name for p in declared}
    for name in given:
        if name not in known:
            raise _unknown_param(owner, declared, name)
    out: dict[str, Any] = {}
    for p in declared:
        value = given.get(p.name, p.default)
        if value is None:
            if p.required:
                if missing is not None:
                    raise missing(p)
                raise PftError(f"{owner} needs {p.name}: {p.description}", field=p.name)
            continue
        out[p.name] = p.check(value, um)
    return out


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    select: Callable[[UnitMap, dict[str, Any]], list[str]] = field(repr=False)
    params: tuple[StrategyParam, ...] = ()
    tunes_stem: bool = False  # stem and final norm, only for full fine-tuning
    paper: bool = False  # one of the paper's eight manual strategies
    # Its runs move every unit, so their final angles can rank units (a valid reference run);
    # units a partial run froze have an angle of exactly 0: no ranking information.
    measures_all: bool = False
    # The unit kinds it selects from (None: every kind); a model without them is refused.
    kinds: tuple[str, ...] | None = None
    # Parameters of which one must be given (the first is asked for when none is).
    one_of: tuple[str, ...] = ()

    def applies(self, um: UnitMap) -> bool:
        return self.kinds is None or any(k in um.kinds for k in self.kinds)

    def param(self, name: str) -> StrategyParam:
        for p in self.params:
            if p.name == name:
                return p
        raise _unknown_param(f"strategy {self.name!r}", self.params, name)

    def takes(self, name: str) -> bool:
        return any(p.name == name for p in self.params)

    def missing(self, params: Mapping[str, Any]) -> list[StrategyParam]:
        """Required parameters without a value in ``params``."""
        out = [p for p in self.params if p.required and params.get(p.name) is None]
        if self.one_of and all(params.get(n) is None for n in self.one_of):
            out.insert(0, self.param(self.one_of[0]))
        return out

    def _missing_error(self, p: StrategyParam) -> PftError:
        asker = next((q for q in self.params if q.fills == p.name), None)
        if not p.public and asker is not None:  # ask for what the user can give
            return PftError(
                f"strategy {self.name!r} needs {asker.name}: {asker.description}",
                field=asker.name,
            )
        if p.name in self.one_of:
            others = " or ".join(self.one_of[1:])
            return PftError(
                f"strategy {self.name!r} needs {p.name}: {p.description} (or {others})",
                field=p.name,
            )
        return PftError(f"strategy {self.name!r} needs {p.name}: {p.description}", field=p.name)

    def validate(self, um: UnitMap, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters checked against ``um``, with defaults filled in (PftError otherwise)."""
        if not self.applies(um):
            fits = [s.name for s in _ALL if s.applies(um)]
            raise PftError(
                f"strategy {self.name!r} tunes {'/'.join(self.kinds or ())} units, and {um.model} "
                f"has only {'/'.join(um.kinds)} units; strategies that apply: {', '.join(fits)}",
                field="name",
            )
        out = check_params(
            f"strategy {self.name!r}", self.params, params, um, missing=self._missing_error
        )
        for p in self.missing(out):
            raise self._missing_error(p)
        return out


@dataclass(frozen=True)
class Selection:
    """A strategy resolved against one model: what exactly is tuned."""

    strategy: str
    params: dict[str, Any]
    units: tuple[str, ...]
    tensors: tuple[str, ...]  # every tuned tensor, head included
    tuned_params: int
    total_params: int
    # True for a preview whose units depend on a value the lab fills at launch (a reference
    # job's angles) that was not given: the counts are exact, the unit names a placeholder.
    provisional: bool = False
    notes: tuple[str, ...] = ()  # e.g. a K larger than a group that takes the whole group

    @property
    def tuned_fraction(self) -> float:
        return self.tuned_params / self.total_params

    def to_dict(self, description: str = "") -> dict:
        hidden = {p.name for p in get_strategy(self.strategy).params if not p.public}
        return {
            "name": self.strategy,
            "description": description,
            "params": {k: v for k, v in self.params.items() if k not in hidden},
            "tuned_params": self.tuned_params,
            "tuned_fraction": self.tuned_fraction,
            "units": list(self.units),
            "provisional": self.provisional,
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# the strategies


def _half(um: UnitMap, which: str) -> set[int]:
    cut = um.depth // 2  # first half: floor(D/2) blocks; last half: ceil(D/2)
    return set(range(cut)) if which == "first" else set(range(cut, um.depth))


def _manual(kinds: tuple[str, ...] | None, blocks: str) -> Callable[[UnitMap, dict], list[str]]:
    """Units of ``kinds`` (None: every kind) in all blocks or one half."""

    def select(um: UnitMap, _: dict) -> list[str]:
        keep = set(range(um.depth)) if blocks == "all" else _half(um, blocks)
        return [u.name for u in um.units if (kinds is None or u.kind in kinds) and u.block in keep]

    return select


def _smallest_group(um: UnitMap) -> int:
    return min(len(us) for us in um.groups.values())


def k_per_group(um: UnitMap, p: Mapping[str, Any]) -> dict[str, int]:
    """The K of each group: ``k_groups`` (a fraction or {group: k}) when given, else ``k``;
    never more than the group holds."""
    spec = p.get("k_groups")
    out = {}
    for group, units in um.groups.items():
        if isinstance(spec, Mapping):
            k = int(spec[group])
        elif spec is not None:
            k = max(1, math.floor(float(spec) * len(units) + 0.5))
        else:
            k = int(p["k"])
        out[group] = min(k, len(units))
    return out


def _topk_notes(um: UnitMap, p: Mapping[str, Any]) -> list[str]:
    if p.get("k_groups") is not None or p.get("k") is None:
        return []
    return [
        f"k={p['k']} is more than the {len(us)} units of group {g}: the whole group is tuned"
        for g, us in um.groups.items()
        if p["k"] > len(us)
    ]


def top_k(um: UnitMap, values: Mapping[str, float], order: str, ks: Mapping[str, int]) -> list[str]:
    """The ``ks[group]`` units of each group with the largest (or smallest) ``values``; ties go
    to the earlier block."""
    chosen = []
    for group, units in um.groups.items():
        ranked = sorted(
            units,
            key=lambda u: (-values[u.name] if order == "largest" else values[u.name], u.block),
        )
        chosen += [u.name for u in ranked[: ks[group]]]
    return chosen


def _ranked_by(values_param: str) -> Callable[[UnitMap, dict], list[str]]:
    """Top-K per group ranked by the per-unit numbers in parameter ``values_param``."""

    def select(um: UnitMap, p: dict) -> list[str]:
        return top_k(um, p[values_param], p["order"], k_per_group(um, p))

    return select


def _custom(um: UnitMap, p: dict) -> list[str]:
    return list(p["units"])


_K_PARAMS = (
    StrategyParam(
        "k",
        "int",
        "units tuned per group (more than a group holds: the whole group)",
        minimum=1,
        suggest=lambda um: max(1, _smallest_group(um) // 2),
    ),
    StrategyParam(
        "k_groups",
        "group_k",
        "instead of k: a fraction of each group (0.5) or {group: k} for every group",
    ),
)
_TOPK_PARAMS = (
    *_K_PARAMS,
    StrategyParam(
        "order",
        "choice",
        "largest angles (hard tasks) or smallest (easy tasks)",
        default="smallest",
        choices=ORDERS,
    ),
    StrategyParam(
        "angles",
        "angles",
        "per-unit fine-tuned angles from a full fine-tuning run",
        required=True,
        public=False,
    ),
    StrategyParam(
        "reference_job",
        "job",
        "a succeeded full fine-tuning job whose final unit angles rank the units",
        fills="angles",
    ),
)
_CRITERION_TOPK_PARAMS = (
    *_K_PARAMS,
    StrategyParam(
        "order",
        "choice",
        "largest scores (the most important units for gradient criteria) or smallest",
        default="largest",
        choices=ORDERS,
    ),
    StrategyParam(
        "scores",
        "angles",
        "per-unit scores from a selection criterion (`pft rank`)",
        required=True,
        public=False,
    ),
    StrategyParam(
        "reference_job",
        "job",
        "a succeeded job whose per-unit scores rank the units (a full fine-tuning job: its "
        "final angles)",
        fills="scores",
    ),
)

_ALL: list[Strategy] = [
    Strategy(
        FULL_FINETUNING,
        "Tune every parameter (full fine-tuning)",
        _manual(None, "all"),
        tunes_stem=True,
        measures_all=True,
    ),
    Strategy("linear_probe", "Tune only the new classifier head", lambda um, p: []),
    Strategy(
        "attn_only",
        "Tune every ATTN unit (+ head)",
        _manual(("ATTN",), "all"),
        kinds=("ATTN",),
        paper=True,
    ),
    Strategy(
        "ffn_only",
        "Tune every FFN unit (+ head)",
        _manual(("FFN",), "all"),
        kinds=("FFN",),
        paper=True,
    ),
    Strategy(
        "attn_first_half",
        "Tune ATTN units of the first half of the blocks",
        _manual(("ATTN",), "first"),
        kinds=("ATTN",),
        paper=True,
    ),
    Strategy(
        "attn_last_half",
        "Tune ATTN units of the last half of the blocks",
        _manual(("ATTN",), "last"),
        kinds=("ATTN",),
        paper=True,
    ),
    Strategy(
        "ffn_first_half",
        "Tune FFN units of the first half of the blocks",
        _manual(("FFN",), "first"),
        kinds=("FFN",),
        paper=True,
    ),
    Strategy(
        "ffn_last_half",
        "Tune FFN units of the last half of the blocks",
        _manual(("FFN",), "last"),
        kinds=("FFN",),
        paper=True,
    ),
    Strategy(
        "blocks_first_half",
        "Tune every unit (ATTN and FFN; a ConvNeXt BLOCK) of the first half of the blocks",
        _manual(None, "first"),
        paper=True,
    ),
    Strategy(
        "blocks_last_half",
        "Tune every unit (ATTN and FFN; a ConvNeXt BLOCK) of the last half of the blocks",
        _manual(None, "last"),
        paper=True,
    ),
    Strategy(
        "angle_topk",
        "FAPFT: tune the top-K units per group ranked by fine-tuned angle",
        _ranked_by("angles"),
        params=_TOPK_PARAMS,
        one_of=("k", "k_groups"),
    ),
    Strategy(
        "criterion_topk",
        "Tune the top-K units per group ranked by a selection criterion's per-unit scores "
        "(relative gradient norm, Fisher, angles; see `pft rank`)",
        _ranked_by("scores"),
        params=_CRITERION_TOPK_PARAMS,
        one_of=("k", "k_groups"),
    ),
    Strategy(
        "custom",
        "Tune an explicit set of units",
        _custom,
        params=(
            StrategyParam(
                "units", "units", "the units to tune, e.g. ATTN.0, FFN.11", required=True
            ),
        ),
    ),
]
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _ALL}


def manual_strategies() -> tuple[str, ...]:
    """The paper's eight manual strategies, in registry order."""
    return tuple(s.name for s in _ALL if s.paper)


MANUAL_STRATEGIES = manual_strategies()


def reference_strategies() -> tuple[str, ...]:
    """Strategies whose runs can serve as a reference (their angles rank every unit)."""
    return tuple(s.name for s in _ALL if s.measures_all)


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise unknown_name("strategy", name, STRATEGIES, field="name") from None


# ---------------------------------------------------------------------------------------------
# resolving


def _selection(um: UnitMap, strategy: Strategy, params: dict, provisional: bool) -> Selection:
    units = sorted(strategy.select(um, params), key=um.unit_names.index)
    notes = tuple(_topk_notes(um, params)) if strategy.one_of else ()
    if strategy.tunes_stem:
        tensors = list(um.shapes)
    else:
        tensors = [t for u in units for t in um.unit(u).tensors] + list(um.head)
    return Selection(
        strategy=strategy.name,
        params=params,
        units=tuple(units),
        tensors=tuple(tensors),
        tuned_params=um.count(tensors),
        total_params=um.total_params,
        provisional=provisional,
        notes=notes,
    )


def resolve_strategy(um: UnitMap, name: str, **params: Any) -> Selection:
    """Resolves a strategy against a unit map to the exact set of tuned units and tensors.

    ``params`` may carry lineage the strategy does not use to select (``reference_job``); it is
    validated and kept in ``Selection.params``.
    """
    strategy = get_strategy(name)
    return _selection(um, strategy, strategy.validate(um, params), provisional=False)


def _neutral(p: StrategyParam, um: UnitMap) -> Any:
    """A placeholder for a value the lab fills at launch: every unit at 0 degrees."""
    if p.kind == "angles":
        return dict.fromkeys(um.unit_names, 0.0)
    raise PftError(f"no placeholder for parameter {p.name!r}", field=p.name)  # pragma: no cover


def preview_strategy(um: UnitMap, name: str, **params: Any) -> Selection:
    """Like `resolve_strategy`, but a missing lab-filled value (a reference job's angles) is
    replaced by a neutral placeholder and the selection marked ``provisional``: its counts are
    exact (units of a group have one shape), its unit names a placeholder ranking."""
    strategy = get_strategy(name)
    given = dict(params)
    placeholders = set()
    for p in strategy.missing(given):
        if not p.public:
            given[p.name] = _neutral(p, um)
            placeholders.add(p.name)
    selection = _selection(um, strategy, strategy.validate(um, given), bool(placeholders))
    if placeholders:  # keep the placeholder out of the selection's parameters
        kept = {k: v for k, v in selection.params.items() if k not in placeholders}
        selection = replace(selection, params=kept)
    return selection


def suggested_params(um: UnitMap, name: str) -> dict[str, Any]:
    """Model-dependent suggestions for parameters (``k``: half the smallest group)."""
    return {p.name: p.suggest(um) for p in get_strategy(name).params if p.suggest is not None}


def previewable(name: str, params: Mapping[str, Any]) -> bool:
    """Whether `preview_strategy` can answer without another value from the user."""
    return all(not p.public for p in get_strategy(name).missing(params))


def prepare_params(
    name: str, given: Mapping[str, Any], *, fill: Callable[[StrategyParam, Any], Any]
) -> dict[str, Any]:
    """A request's parameters made ready to store: checked (without a unit map), defaults set,
    and every parameter that ``fills`` another resolved through ``fill(param, value)`` (the
    backend's ``fill`` looks up the reference job and returns its angles). Raises PftError with
    ``field`` for unknown parameters, bad values and missing required ones."""
    strategy = get_strategy(name)
    params: dict[str, Any] = {}
    for key, value in given.items():
        p = strategy.param(key)
        if value is not None:
            params[key] = p.check(value)
    for p in strategy.params:
        if p.fills and p.name in params:
            params[p.fills] = strategy.param(p.fills).check(fill(p, params[p.name]))
        elif p.name not in params and p.default is not None:
            params[p.name] = p.default
    for p in strategy.missing(params):
        raise strategy._missing_error(p)
    return params


def catalogue() -> list[dict]:
    """The registry as plain data shaped like `contract.api.RegistryEntry` (public parameters;
    a parameter that fills a required one is required itself)."""
    out = []
    for s in _ALL:
        params = []
        for p in s.params:
            if not p.public:
                continue
            row = p.public_dict()
            if (p.fills and s.param(p.fills).required) or p.name == next(iter(s.one_of), None):
                row["required"] = True  # k: required unless k_groups is given
            params.append(row)
        out.append({"name": s.name, "description": s.description, "params": params})
    return out

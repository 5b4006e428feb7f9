"""The strategy catalogue: rules that say which units a partial fine-tuning run tunes (torch-free).

Ye et al. (arXiv 2312.15681) compare full fine-tuning, linear probing and eight manual
strategies, {ATTN, FFN, ATTN+FFN} x {all blocks, first half, last half} minus full, and
propose FAPFT: tune the top-K units of each homogeneous group ranked by fine-tuned angle
(``angle_topk``; largest angles for hard tasks, smallest for easy ones). ``custom`` tunes an
explicit set of units.

Every strategy tunes the head. The stem (patch embedding, tokens, position embedding) and the
final norm are tuned only by ``full``. With an odd depth D, the "first half" is the first
floor(D/2) blocks and the "last half" the remaining ceil(D/2).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pft.errors import PftError
from pft.units import UnitMap

ORDERS = ("largest", "smallest")


@dataclass(frozen=True)
class StrategyParam:
    name: str
    kind: str  # "int", "choice", "angles" (unit -> degrees) or "units" (list of unit names)
    description: str
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    select: Callable[[UnitMap, dict[str, Any]], list[str]] = field(repr=False)
    params: tuple[StrategyParam, ...] = ()
    tunes_stem: bool = False  # stem and final norm, only for full fine-tuning


@dataclass(frozen=True)
class Selection:
    """A strategy resolved against one model: what exactly is tuned."""

    strategy: str
    params: dict[str, Any]
    units: tuple[str, ...]
    tensors: tuple[str, ...]  # every tuned tensor, head included
    tuned_params: int
    total_params: int

    @property
    def tuned_fraction(self) -> float:
        return self.tuned_params / self.total_params

    def to_dict(self, description: str = "") -> dict:
        return {
            "name": self.strategy,
            "description": description,
            "params": {k: v for k, v in self.params.items() if k != "angles"},
            "tuned_params": self.tuned_params,
            "tuned_fraction": self.tuned_fraction,
            "units": list(self.units),
        }


def _half(um: UnitMap, which: str) -> set[int]:
    cut = um.depth // 2  # first half: floor(D/2) blocks; last half: ceil(D/2)
    return set(range(cut)) if which == "first" else set(range(cut, um.depth))


def _manual(kinds: tuple[str, ...], blocks: str) -> Callable[[UnitMap, dict], list[str]]:
    def select(um: UnitMap, _: dict) -> list[str]:
        keep = set(range(um.depth)) if blocks == "all" else _half(um, blocks)
        return [u.name for u in um.units if u.kind in kinds and u.block in keep]

    return select


def _angle_topk(um: UnitMap, p: dict) -> list[str]:
    angles: Mapping[str, float] = p["angles"]
    k, order = p["k"], p["order"]
    chosen = []
    for units in um.groups.values():
        ranked = sorted(
            units,
            key=lambda u: (-angles[u.name] if order == "largest" else angles[u.name], u.block),
        )
        chosen += [u.name for u in ranked[:k]]
    return chosen


def _custom(um: UnitMap, p: dict) -> list[str]:
    return list(p["units"])


_K = StrategyParam("k", "int", "units tuned per group", default=None, minimum=1)
_ORDER = StrategyParam(
    "order", "choice", "largest angles (hard tasks) or smallest (easy tasks)", "smallest", ORDERS
)
_ANGLES = StrategyParam(
    "angles", "angles", "per-unit fine-tuned angles from a full fine-tuning run"
)
_UNITS = StrategyParam("units", "units", "the units to tune, e.g. ATTN.0, FFN.11")

_ALL: list[Strategy] = [
    Strategy(
        "full",
        "Tune every parameter (full fine-tuning)",
        _manual(("ATTN", "FFN"), "all"),
        tunes_stem=True,
    ),
    Strategy("linear_probe", "Tune only the new classifier head", lambda um, p: []),
    Strategy("attn_only", "Tune every ATTN unit (+ head)", _manual(("ATTN",), "all")),
    Strategy("ffn_only", "Tune every FFN unit (+ head)", _manual(("FFN",), "all")),
    Strategy(
        "attn_first_half",
        "Tune ATTN units of the first half of the blocks",
        _manual(("ATTN",), "first"),
    ),
    Strategy(
        "attn_last_half",
        "Tune ATTN units of the last half of the blocks",
        _manual(("ATTN",), "last"),
    ),
    Strategy(
        "ffn_first_half",
        "Tune FFN units of the first half of the blocks",
        _manual(("FFN",), "first"),
    ),
    Strategy(
        "ffn_last_half", "Tune FFN units of the last half of the blocks", _manual(("FFN",), "last")
    ),
    Strategy(
        "blocks_first_half",
        "Tune ATTN and FFN units of the first half of the blocks",
        _manual(("ATTN", "FFN"), "first"),
    ),
    Strategy(
        "blocks_last_half",
        "Tune ATTN and FFN units of the last half of the blocks",
        _manual(("ATTN", "FFN"), "last"),
    ),
    Strategy(
        "angle_topk",
        "FAPFT: tune the top-K units per group ranked by fine-tuned angle",
        _angle_topk,
        params=(_K, _ORDER, _ANGLES),
    ),
    Strategy("custom", "Tune an explicit set of units", _custom, params=(_UNITS,)),
]
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _ALL}
MANUAL_STRATEGIES = tuple(s.name for s in _ALL[2:10])  # the paper's eight


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PftError(
            f"unknown strategy {name!r}{hint}; accepted: {', '.join(STRATEGIES)}"
        ) from None


def validate_params(um: UnitMap, strategy: Strategy, params: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a strategy's parameters against a unit map; returns them with defaults filled."""
    known = {p.name for p in strategy.params}
    extra = sorted(set(params) - known)
    if extra:
        accepted = ", ".join(sorted(known)) or "none"
        raise PftError(
            f"strategy {strategy.name!r} takes no parameter {extra[0]!r}; accepted: {accepted}"
        )
    out = {p.name: params.get(p.name, p.default) for p in strategy.params}
    if strategy.name == "angle_topk":
        smallest = min(len(us) for us in um.groups.values())
        k = out["k"]
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= smallest:
            raise PftError(
                f"k must be an integer from 1 to {smallest} (units per group), got {k!r}"
            )
        if out["order"] not in ORDERS:
            raise PftError(f"order must be one of {', '.join(ORDERS)}, got {out['order']!r}")
        angles = out["angles"]
        if not isinstance(angles, Mapping):
            raise PftError("angles must map unit names to degrees (from a full fine-tuning run)")
        for name in um.unit_names:
            if name not in angles:
                raise PftError(f"angles are missing unit {name!r}")
        out["angles"] = {n: float(angles[n]) for n in um.unit_names}
    if strategy.name == "custom":
        units = out["units"]
        if not isinstance(units, list | tuple) or not all(isinstance(u, str) for u in units):
            raise PftError("units must be a list of unit names such as 'ATTN.0' or 'FFN.3'")
        for u in units:
            um.unit(u)  # raises with the accepted range
        out["units"] = sorted(set(units), key=um.unit_names.index)
    return out


def resolve_strategy(um: UnitMap, name: str, **params: Any) -> Selection:
    """Resolves a strategy against a unit map to the exact set of tuned units and tensors."""
    strategy = get_strategy(name)
    params = validate_params(um, strategy, params)
    units = strategy.select(um, params)
    order = um.unit_names
    units = sorted(units, key=order.index)
    if strategy.tunes_stem:
        tensors = list(um.shapes)
    else:
        tensors = [t for u in units for t in um.unit(u).tensors] + list(um.head)
    return Selection(
        strategy=name,
        params=params,
        units=tuple(units),
        tensors=tuple(tensors),
        tuned_params=um.count(tensors),
        total_params=um.total_params,
    )


def catalogue() -> list[dict]:
    """The strategy catalogue as plain data (names, descriptions, parameters) for UIs and APIs."""
    return [
        {
            "name": s.name,
            "description": s.description,
            "params": [{k: v for k, v in vars(p).items() if v not in (None, ())} for p in s.params],
        }
        for s in _ALL
    ]

"""The unit map: which tensors of a timm ViT form which residual unit (torch-free).

A *unit* is one residual sub-layer with the LayerNorm in front of it (Ye et al. 2023):
``ATTN.i`` = ``blocks.i.norm1`` + ``blocks.i.attn.*`` (+ layer scale ``ls1``/``gamma_1``),
``FFN.i`` = ``blocks.i.norm2`` + ``blocks.i.mlp.*`` (+ ``ls2``/``gamma_2``).
Units of one shape form a *group* ranked together: ``ATTN`` and ``FFN`` for plain ViTs, one pair
per stage (``S0.ATTN``, ``S0.FFN``, ...) for Swin, whose blocks are numbered in depth order
across stages. The head is always tuned; the stem (patch embedding, cls/register tokens,
position embedding) and the final norm are tuned only by full fine-tuning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pft.errors import PftError

SUPPORTED_FAMILIES = (
    "ViT / DeiT / BEiT / EVA / any timm model with `blocks.N.{norm1,attn,norm2,mlp}`",
    "Swin / hierarchical models with `layers.S.blocks.M.{norm1,attn,norm2,mlp}`",
)
UNIT_KINDS = ("ATTN", "FFN")

_FLAT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_STAGED_BLOCK = re.compile(r"^(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.(.+)$")
_ATTN_PARTS = ("norm1.", "attn.", "ls1.", "gamma_1", "drop_path1")
_FFN_PARTS = ("norm2.", "mlp.", "ls2.", "gamma_2", "drop_path2")
_HEAD = re.compile(r"^head(\.fc)?\.(weight|bias)$")
_FINAL_NORM = re.compile(r"^(norm|fc_norm|head\.norm)\.")


@dataclass(frozen=True)
class Unit:
    name: str  # "ATTN.3"
    kind: str  # "ATTN" or "FFN"
    block: int  # depth index across the whole model
    group: str  # "ATTN", or "S1.ATTN" for hierarchical models
    tensors: tuple[str, ...]
    params: int


@dataclass(frozen=True)
class UnitMap:
    model: str
    num_classes: int
    units: tuple[Unit, ...]
    head: tuple[str, ...]  # tensors of the classifier, always tuned
    stem: tuple[str, ...]  # patch embedding, tokens, position embedding, downsampling
    final_norm: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)

    @property
    def depth(self) -> int:
        return 1 + max(u.block for u in self.units)

    @property
    def total_params(self) -> int:
        return sum(_numel(s) for s in self.shapes.values())

    @property
    def head_params(self) -> int:
        return self.count(self.head)

    @property
    def groups(self) -> dict[str, list[Unit]]:
        """Units by group, each list in depth order."""
        out: dict[str, list[Unit]] = {}
        for unit in self.units:
            out.setdefault(unit.group, []).append(unit)
        return out

    @property
    def unit_names(self) -> list[str]:
        return [u.name for u in self.units]

    def unit(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise PftError(
            f"unknown unit {name!r} for {self.model}: accepted are ATTN.0..ATTN.{self.depth - 1} "
            f"and FFN.0..FFN.{self.depth - 1}"
        )

    def count(self, tensors: Iterable[str]) -> int:
        return sum(_numel(self.shapes[t]) for t in tensors)

    def unit_of_tensor(self) -> dict[str, str]:
        return {t: u.name for u in self.units for t in u.tensors}

    def to_dict(self) -> dict:
        """The JSON contract of `pft units --json` and the backend's unit preview."""
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "total_params": self.total_params,
            "head_params": self.head_params,
            "depth": self.depth,
            "groups": {g: [u.name for u in us] for g, us in self.groups.items()},
            "units": [
                {
                    "name": u.name,
                    "group": u.group,
                    "kind": u.kind,
                    "block": u.block,
                    "params": u.params,
                    "tensors": list(u.tensors),
                }
                for u in self.units
            ],
        }


def _numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


def _unit_kind(rest: str) -> str | None:
    if rest.startswith(_ATTN_PARTS):
        return "ATTN"
    if rest.startswith(_FFN_PARTS):
        return "FFN"
    return None


def build_unit_map(
    named_shapes: Iterable[tuple[str, Iterable[int]]], *, model: str = "model", num_classes: int
) -> UnitMap:
    """Builds the unit map from a timm model's (parameter name, shape) pairs.

    Raises PftError naming the supported families when no transformer blocks are found.
    """
    shapes = {name: tuple(int(d) for d in shape) for name, shape in named_shapes}
    stages: dict[tuple[int, int], int] = {}  # (stage, local block) -> stage, for depth order
    tensors: dict[tuple[str, int, int], list[str]] = {}  # (kind, stage, local) -> names
    head, stem, final_norm = [], [], []
    staged = any(_STAGED_BLOCK.match(n) for n in shapes)
    for name in shapes:
        flat = None if staged else _FLAT_BLOCK.match(name)
        deep = _STAGED_BLOCK.match(name) if staged else None
        if flat or deep:
            stage, local, rest = (
                (0, int(flat[1]), flat[2]) if flat else (int(deep[1]), int(deep[2]), deep[3])
            )
            kind = _unit_kind(rest)
            if kind is None:
                # Tensors of a block outside both residual branches (rare; e.g. a block-level
                # norm) follow the stem rule: tuned only by full fine-tuning.
                stem.append(name)
                continue
            stages[(stage, local)] = stage
            tensors.setdefault((kind, stage, local), []).append(name)
        elif _HEAD.match(name):
            head.append(name)
        elif _FINAL_NORM.match(name):
            final_norm.append(name)
        else:
            stem.append(name)
    if not tensors:
        raise PftError(
            f"{model}: no transformer blocks found; supported families are: "
            + "; ".join(SUPPORTED_FAMILIES)
        )
    order = sorted(stages)  # depth order across stages
    depth_index = {key: i for i, key in enumerate(order)}
    units = []
    for kind in UNIT_KINDS:
        for key in order:
            names = tensors.get((kind, *key))
            if not names:
                raise PftError(f"{model}: block {depth_index[key]} has no {kind} tensors")
            stage = key[0]
            group = f"S{stage}.{kind}" if staged else kind
            i = depth_index[key]
            units.append(
                Unit(
                    f"{kind}.{i}",
                    kind,
                    i,
                    group,
                    tuple(names),
                    sum(_numel(shapes[n]) for n in names),
                )
            )
    units.sort(key=lambda u: (u.block, UNIT_KINDS.index(u.kind)))
    return UnitMap(
        model=model,
        num_classes=num_classes,
        units=tuple(units),
        head=tuple(head),
        stem=tuple(stem),
        final_norm=tuple(final_norm),
        shapes=shapes,
    )

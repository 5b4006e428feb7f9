"""The unit map: which tensors of a timm ViT form which residual unit (torch-free).

A *unit* is one residual sub-layer with the LayerNorm in front of it (Ye et al. 2023):
``ATTN.i`` = ``blocks.i.norm1`` + ``blocks.i.attn.*`` (+ layer scale ``ls1``/``gamma_1``),
``FFN.i`` = ``blocks.i.norm2`` + ``blocks.i.mlp.*`` (+ ``ls2``/``gamma_2``).
Units of one shape form a *group* ranked together: ``ATTN`` and ``FFN`` for plain ViTs, one pair
per stage (``S0.ATTN``, ``S0.FFN``, ...) for Swin, whose blocks are numbered in depth order
across stages. CaiT's class-attention blocks (``blocks_token_only.N``) are ATTN/FFN units after
the self-attention blocks, in groups of their own (``CA.ATTN``, ``CA.FFN``). A ConvNeXt block
has a single residual branch (depthwise conv, norm, MLP, layer scale ``gamma``): that branch is
one ``BLOCK`` unit, grouped per stage (``S0.BLOCK``, ...). A group whose blocks differ in shape
is split (``ATTN:0``, ``ATTN:1``, ...). The head (``head``, ``head.fc`` and a distilled model's
``head_dist``) is always tuned; the stem (patch embedding, cls/register tokens, position
embedding, downsampling, pre-trained MAP pooling ``attn_pool``, block tensors outside both
branches such as ``swinv2_cr``'s ``norm3``) and the final norm are tuned only by full
fine-tuning.

Where the debatable tensors go, and why:

* ``attn_pool`` (the MAP pooling of SigLIP/PE/some ViTs, up to 8% of a model) is pre-trained,
  not new: tuning it always would make a linear probe tune far more than a classifier, and its
  attention is not a residual sub-layer (a learned query replaces the tokens), so it is not a
  unit either. It sits with the stem: tuned only by ``full``.
* ``swinv2_cr``'s block-level ``norm3`` (every few blocks, after both branches) belongs to
  neither residual branch, so it joins no unit; like the stem it is tuned only by ``full``.
* EVA-02's separate ``attn.q_proj/k_proj/v_proj`` (and fused-qkv models' ``attn.q_bias`` /
  ``v_bias``), SwiGLU's ``mlp.fc1_g/fc1_x`` and inner ``mlp.norm`` are ordinary members of their
  ATTN / FFN unit; `tensor_part` labels them for heatmaps (``qkv``, ``fc1``, ``other``).

`UnitMap.to_dict` lists the head, stem and final-norm tensors next to the units, so
``pft units --json`` shows where each of these went.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from pft.errors import PftError

SUPPORTED_FAMILIES = (
    "ViT / DeiT / BEiT / EVA / any timm model with `blocks.N.{norm1,attn,norm2,mlp}`",
    "Swin / hierarchical models with `layers.S.blocks.M.{norm1,attn,norm2,mlp}`",
    "CaiT class-attention blocks `blocks_token_only.N.{norm1,attn,norm2,mlp}`",
    "ConvNeXt with `stages.S.blocks.M.{conv_dw,norm,mlp,gamma}` (one BLOCK unit per block)",
)
UNIT_KINDS = ("ATTN", "FFN", "BLOCK")
BRANCH_KINDS = ("ATTN", "FFN")  # the two residual branches of a transformer block

_FLAT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TOKEN_BLOCK = re.compile(r"^blocks_token_only\.(\d+)\.(.+)$")  # CaiT class attention
_STAGED_BLOCK = re.compile(r"^(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.(.+)$")
_ATTN_PARTS = ("norm1.", "attn.", "ls1.", "gamma_1", "drop_path1")
_FFN_PARTS = ("norm2.", "mlp.", "ls2.", "gamma_2", "drop_path2")
_HEAD = re.compile(r"^head(_dist)?(\.fc)?\.(weight|bias)$")
_CONV_BRANCH = ("conv_dw.",)  # a ConvNeXt block: one residual branch, one BLOCK unit
_FINAL_NORM = re.compile(r"^(norm|fc_norm|head\.norm)\.")

# The heatmap columns of a unit's tensors, in a block's order, each with the prefixes its tensors'
# names take after the block (`block_rest`). Everything else in a unit is ``other``.
TENSOR_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("norm1", ("norm1.",)),
    (
        "qkv",  # the attention's queries, keys and values however a family stores them
        (
            "attn.qkv.",  # fused (ViT, DeiT, Swin, BEiT, EVA)
            "attn.q_bias",  # separate biases of a fused qkv (BEiT, EVA, Swin-V2)
            "attn.k_bias",
            "attn.v_bias",
            "attn.q_proj.",  # separate projections (EVA-02)
            "attn.k_proj.",
            "attn.v_proj.",
            "attn.q.",  # CaiT class attention
            "attn.k.",
            "attn.v.",
        ),
    ),
    ("proj", ("attn.proj.",)),
    ("norm2", ("norm2.",)),
    ("conv_dw", ("conv_dw.",)),  # ConvNeXt BLOCK: depthwise conv, norm, MLP
    ("norm", ("norm.",)),
    ("fc1", ("mlp.fc1.", "mlp.fc1_g.", "mlp.fc1_x.")),  # SwiGLU's gate and value halves too
    ("fc2", ("mlp.fc2.",)),
)
OTHER_PART = "other"


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
        kinds = [k for k in UNIT_KINDS if k in self.kinds]
        accepted = " and ".join(f"{k}.0..{k}.{self.depth - 1}" for k in kinds)
        raise PftError(f"unknown unit {name!r} for {self.model}: accepted are {accepted}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The unit kinds this model has (``ATTN``/``FFN`` or ``BLOCK``)."""
        present = {u.kind for u in self.units}
        return tuple(k for k in UNIT_KINDS if k in present)

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
            # Tensors outside the units: always tuned (head), or only by full fine-tuning.
            "head": list(self.head),
            "stem": list(self.stem),
            "final_norm": list(self.final_norm),
        }


def block_rest(name: str) -> str | None:
    """A block tensor's name after its block (``attn.qkv.weight`` for ``blocks.3.attn.qkv.weight``,
    ``layers.1.blocks.0.attn.qkv.weight`` and ``blocks_token_only.0.attn.qkv.weight``); None for
    tensors outside the blocks."""
    for pattern in (_STAGED_BLOCK, _TOKEN_BLOCK, _FLAT_BLOCK):
        m = pattern.match(name)
        if m:
            return m[m.lastindex or 0]
    return None


def tensor_part(name: str) -> str:
    """The heatmap column of a unit tensor (`TENSOR_PARTS`): ``norm1``, ``qkv``, ``proj``,
    ``norm2``, ``fc1``, ``fc2`` (ConvNeXt: ``conv_dw``, ``norm``, ``fc1``, ``fc2``) or ``other``.

    A part is read from the name after the block, so a sub-module's own layers are not taken
    for the block's: EVA-02's ``attn.q_proj/k_proj/v_proj`` (and BEiT/EVA/Swin-V2 ``q_bias`` /
    ``v_bias``) are ``qkv`` like a ViT's fused ``attn.qkv``, CaiT's class-attention ``attn.q/k/v``
    too, SwiGLU's ``mlp.fc1_g``/``fc1_x`` are ``fc1``; ``other`` holds layer scale
    (``ls1``, ``gamma_1``, ConvNeXt ``gamma``), attention extras (relative-position bias tables,
    ``logit_scale``, Swin-V2's ``cpb_mlp``, ``swinv2_cr``'s ``attn.meta_mlp.fc1``, CaiT's
    talking-heads ``proj_l``/``proj_w``) and inner norms (``attn.norm``, QK-norm ``attn.q_norm``
    / ``k_norm``, SwiGLU ``mlp.norm``, ConvNeXt-V2 ``mlp.grn``).
    Tensors outside the units (stem with ``attn_pool`` and ``swinv2_cr``'s ``norm3``, head, final
    norm) have no part in a heatmap."""
    rest = block_rest(name)
    if rest is not None:
        for part, prefixes in TENSOR_PARTS:
            if rest.startswith(prefixes):
                return part
    return OTHER_PART


def _numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


def _unit_kind(rest: str) -> str | None:
    if rest.startswith(_ATTN_PARTS):
        return "ATTN"
    if rest.startswith(_FFN_PARTS):
        return "FFN"
    return None


def _split_by_shape(units: list[Unit], shapes: dict[str, tuple[int, ...]]) -> list[Unit]:
    """Units of one group must share a shape to be ranked together: a group whose blocks differ
    (e.g. grouped-query attention in some blocks only) is split into ``GROUP:0``, ``GROUP:1``,
    ... in order of first appearance. Groups of one shape keep their name."""
    signatures: dict[str, list[tuple]] = {}
    for u in units:
        sig = tuple(shapes[t] for t in u.tensors)
        known = signatures.setdefault(u.group, [])
        if sig not in known:
            known.append(sig)
    out = []
    for u in units:
        known = signatures[u.group]
        if len(known) > 1:
            sig = tuple(shapes[t] for t in u.tensors)
            u = replace(u, group=f"{u.group}:{known.index(sig)}")
        out.append(u)
    return out


def build_unit_map(
    named_shapes: Iterable[tuple[str, Iterable[int]]], *, model: str = "model", num_classes: int
) -> UnitMap:
    """Builds the unit map from a timm model's (parameter name, shape) pairs.

    Raises PftError naming the supported families when no transformer blocks are found.
    """
    shapes = {name: tuple(int(d) for d in shape) for name, shape in named_shapes}
    # (stage, local block) -> [(tensor, rest of name)], stage -1 = CaiT class-attention blocks,
    # which come after every self-attention block.
    blocks: dict[tuple[int, int], list[tuple[str, str]]] = {}
    head, stem, final_norm = [], [], []
    staged = any(_STAGED_BLOCK.match(n) for n in shapes)
    for name in shapes:
        flat = None if staged else _FLAT_BLOCK.match(name)
        deep = _STAGED_BLOCK.match(name) if staged else None
        token = None if staged else _TOKEN_BLOCK.match(name)
        if flat:
            blocks.setdefault((0, int(flat[1])), []).append((name, flat[2]))
        elif deep:
            blocks.setdefault((int(deep[1]), int(deep[2])), []).append((name, deep[3]))
        elif token:
            blocks.setdefault((1, int(token[1])), []).append((name, token[2]))
        elif _HEAD.match(name):
            head.append(name)
        elif _FINAL_NORM.match(name):
            final_norm.append(name)
        else:
            stem.append(name)
    if not blocks:
        raise PftError(
            f"{model}: no transformer or ConvNeXt blocks found; supported families are: "
            + "; ".join(SUPPORTED_FAMILIES)
        )
    order = sorted(blocks)  # depth order across stages (CaiT: class attention last)
    cait = not staged and any(_TOKEN_BLOCK.match(n) for n in shapes)
    units = []
    for i, key in enumerate(order):
        members = blocks[key]
        stage = key[0]
        if any(rest.startswith(_CONV_BRANCH) for _, rest in members):
            by_kind = {"BLOCK": [n for n, _ in members]}
        else:
            by_kind = {}
            for n, rest in members:
                kind = _unit_kind(rest)
                if kind is None:
                    # Tensors of a block outside both residual branches (rare; e.g. a block-level
                    # norm) follow the stem rule: tuned only by full fine-tuning.
                    stem.append(n)
                    continue
                by_kind.setdefault(kind, []).append(n)
            for kind in BRANCH_KINDS:
                if kind not in by_kind:
                    parts = sorted({rest.split(".")[0] for _, rest in members})
                    raise PftError(
                        f"{model}: block {i} has no {kind} tensors (its parts: "
                        f"{', '.join(parts)}); supported families are: "
                        + "; ".join(SUPPORTED_FAMILIES)
                    )
        for kind, names in by_kind.items():
            if staged:
                group = f"S{stage}.{kind}"
            elif cait and stage == 1:
                group = f"CA.{kind}"
            else:
                group = kind
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
    units = _split_by_shape(units, shapes)
    return UnitMap(
        model=model,
        num_classes=num_classes,
        units=tuple(units),
        head=tuple(head),
        stem=tuple(stem),
        final_norm=tuple(final_norm),
        shapes=shapes,
    )

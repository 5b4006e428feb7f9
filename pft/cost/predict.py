"""Predicted training time and peak memory of a fine-tuning run, from a calibration (torch-free).

A calibration (`pft.cost.calibrate`) measures, on one device kind and one model, per-image
seconds of the pieces a training step is made of. A run of strategy S on that model is then
(per image unless noted; ``b`` = the lowest block with a tuned tensor, ``depth`` if only the
head is tuned; ``w_i`` = the tuned share of block i's parameters; ``P`` = tuned parameters)::

    block_i  = block_forward                          for i < b   (frozen prefix: forward only)
             = g0 + (block_train - g0) * w_i          for i >= b  (g0 = min(2 * block_forward,
                                                       block_train): forward + input gradient)
    step     = Σ block_i + head_train
             + (full_extra      if the stem is tuned, else stem_forward)
             + (prepare_train   if augment, else prepare_eval)
    train    = epochs * (n_train * step + ceil(n_train / B) * optimizer_per_param * P)
    eval     = epochs * n_eval * (prepare_eval + stem_forward + depth * block_forward)

With the frozen prefix cached (augmentation off, prefix caching on, ``b > 0``, a model family
`pft.prefix_cache` supports: the calibration says), the prefix runs once and training runs
on the suffix only::

    prefix   = (n_train + n_eval) * (prepare_eval + stem_forward + b * block_forward)
    step     = Σ_{i >= b} block_i + head_train
    eval     = epochs * n_eval * (depth - b) * block_forward

The predicted seconds are ``prefix + train + eval``; ``prefix + train`` is what a finished job
reports as ``train_seconds`` plus its ``prefix_cache.seconds``. Peak memory (bytes)::

    weights  = 4 * total params                        (fp32 master weights)
    tuned    = 12 * P                                  (fp32 gradient + AdamW's two moments)
    acts     = B * (input_bytes + head_activation
                    + block_activation * trainable blocks   (every block >= b; an upper bound
                                                            for partly tuned blocks)
                    + stem_activation   if the stem is tuned
                    + block_activation  if a frozen prefix runs (its working set))
    cache    = token_bytes * (n_train + n_eval)        when the prefix is cached
    peak     = weights + tuned + scale * acts + cache

``block_activation`` etc. are what autograd saves for backward, counted by the calibration;
``scale`` is 1 on CPU and, on CUDA, the measured peak of the full path over this formula's
estimate for it (allocator and workspace overhead).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pft.errors import PftError
from pft.units import UnitMap

CALIBRATION_VERSION = 1
MB = 2**20
# Every coefficient a calibration carries, seconds per image (optimizer: per parameter, step).
TIME_KEYS = (
    "prepare_train",  # preprocessing of a training batch, with augmentation
    "prepare_eval",  # preprocessing without augmentation
    "stem_forward",  # patch embedding and position embedding, no gradient
    "block_forward",  # one transformer block, no gradient (the prefix path / depth)
    "block_train",  # one block, every tensor tuned: forward + backward (the suffix path)
    "head_train",  # final norm, pooling and head: forward + backward
    "full_extra",  # what full fine-tuning adds beyond its blocks and head (the tuned stem)
    "optimizer_per_param",  # one AdamW step, per tuned parameter
)
MEMORY_KEYS = (
    "input_bytes",  # one preprocessed image on the device
    "stem_activation",  # saved for backward by a tuned stem
    "block_activation",  # saved for backward by one tuned block
    "head_activation",  # saved by norm, pooling and head
    "token_bytes",  # one image's cached prefix tokens
    "scale",  # measured / estimated peak of the full path (1: CPU)
)


@dataclass(frozen=True)
class RunShape:
    """What of a run the cost depends on, besides the strategy."""

    train_images: int
    eval_images: int  # held-out + test, evaluated after every epoch
    epochs: int
    batch_size: int
    augment: bool = True
    prefix_cache: bool = True


@dataclass(frozen=True)
class Prediction:
    strategy: str
    seconds: float  # prefix + train + eval
    train_seconds: float  # the training steps (a job's summary: train_seconds)
    prefix_seconds: float  # the one-time prefix pass (a job's summary: prefix_cache.seconds)
    eval_seconds: float  # evaluation after every epoch
    peak_mb: float
    prefix_cached: bool
    prefix_blocks: int  # blocks below the lowest tuned one
    device_kind: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_calibration(cal: Mapping[str, Any]) -> None:
    """Raises PftError unless ``cal`` is a calibration this module can read."""
    if not isinstance(cal, Mapping) or cal.get("version") != CALIBRATION_VERSION:
        raise PftError(
            f"not a calibration of version {CALIBRATION_VERSION}; calibrate again "
            "(`pft strategies MODEL --dataset D --epochs E --recalibrate`)"
        )
    for section, keys in (("seconds", TIME_KEYS), ("memory", MEMORY_KEYS)):
        values = cal.get(section) or {}
        missing = [k for k in keys if not isinstance(values.get(k), int | float)]
        if missing:
            raise PftError(f"calibration lacks {section}.{missing[0]}; calibrate again")
    if not isinstance(cal.get("depth"), int) or cal["depth"] < 1:
        raise PftError("calibration lacks the model's depth; calibrate again")


def tuned_layout(unit_map: UnitMap, tensors: Iterable[str]) -> tuple[int, bool, dict[int, float]]:
    """``(b, stem_tuned, {block: tuned share of its parameters})`` of a selection: ``b`` is the
    lowest block with a tuned tensor (``depth`` when only the head is tuned)."""
    tuned = set(tensors)
    stem_tuned = bool(tuned & (set(unit_map.stem) | set(unit_map.final_norm)))
    total: dict[int, int] = {}
    share: dict[int, int] = {}
    for u in unit_map.units:
        total[u.block] = total.get(u.block, 0) + u.params
        share[u.block] = share.get(u.block, 0) + unit_map.count(t for t in u.tensors if t in tuned)
    fractions = {b: share[b] / total[b] for b in total if total[b]}
    tuned_blocks = [b for b, f in fractions.items() if f > 0]
    first = 0 if stem_tuned else min(tuned_blocks, default=unit_map.depth)
    return first, stem_tuned, fractions


def predict(
    cal: Mapping[str, Any],
    unit_map: UnitMap,
    strategy: str,
    tensors: Iterable[str],
    run: RunShape,
) -> Prediction:
    """The predicted cost of training ``tensors`` (a resolved selection) of ``unit_map``'s model
    for ``run`` on the calibration's device (the formula: this module's docstring)."""
    check_calibration(cal)
    tensors = list(tensors)
    t, m = cal["seconds"], cal["memory"]
    depth = int(cal["depth"])
    first, stem_tuned, fractions = tuned_layout(unit_map, tensors)
    first = min(first, depth)
    tuned_params = unit_map.count(tensors)
    cached = (
        run.prefix_cache
        and not run.augment
        and bool(cal.get("prefix_cache_supported"))
        and not stem_tuned
        and first > 0
    )
    f, g = t["block_forward"], t["block_train"]
    g0 = min(2 * f, g)
    suffix = sum(g0 + (g - g0) * fractions.get(i, 0.0) for i in range(first, depth))
    step = suffix + t["head_train"]
    if not cached:
        step += first * f
        step += t["full_extra"] if stem_tuned else t["stem_forward"]
        step += t["prepare_train"] if run.augment else t["prepare_eval"]
    steps = math.ceil(run.train_images / run.batch_size)
    opt = steps * t["optimizer_per_param"] * tuned_params
    train = run.epochs * (run.train_images * step + opt)
    everything = run.train_images + run.eval_images
    if cached:
        prefix = everything * (t["prepare_eval"] + t["stem_forward"] + first * f)
        evaluate = run.epochs * run.eval_images * (depth - first) * f
    else:
        prefix = 0.0
        evaluate = (
            run.epochs * run.eval_images * (t["prepare_eval"] + t["stem_forward"] + depth * f)
        )
    acts = m["input_bytes"] + m["head_activation"] + m["block_activation"] * (depth - first)
    if stem_tuned:
        acts += m["stem_activation"]
    if first > 0 and not cached:
        acts += m["block_activation"]
    peak = (
        4 * unit_map.total_params
        + 12 * tuned_params
        + m["scale"] * run.batch_size * acts
        + (m["token_bytes"] * everything if cached else 0)
    )
    return Prediction(
        strategy=strategy,
        seconds=prefix + train + evaluate,
        train_seconds=train,
        prefix_seconds=prefix,
        eval_seconds=evaluate,
        peak_mb=peak / MB,
        prefix_cached=cached,
        prefix_blocks=first,
        device_kind=str(cal.get("device_kind", "unknown")),
    )


def predict_strategies(
    cal: Mapping[str, Any], unit_map: UnitMap, run: RunShape
) -> list[dict[str, Any]]:
    """`predict` for every strategy of the registry that applies to the model and can be
    previewed with its suggested parameters (``pft strategies``' rows): each row is the
    prediction with ``tuned_params`` and ``provisional`` (units that a reference job ranks are
    a placeholder until it is chosen: the lowest tuned block, and so the time, is a guess)."""
    from pft.strategies import STRATEGIES, preview_strategy, previewable, suggested_params

    rows = []
    for name, strategy in STRATEGIES.items():
        if not strategy.applies(unit_map):
            continue
        params = suggested_params(unit_map, name)
        if not previewable(name, params):
            continue
        sel = preview_strategy(unit_map, name, **params)
        row = predict(cal, unit_map, name, sel.tensors, run).to_dict()
        rows.append(row | {"tuned_params": sel.tuned_params, "provisional": sel.provisional})
    return rows


def calibration_key(
    device_kind: str, model: str, img_size: int, overrides: Mapping[str, Any] | None = None
) -> str:
    """The name a calibration is cached under: device kind + model (+ any other override) +
    image size."""
    extra = "".join(f"-{k}{v}" for k, v in sorted((overrides or {}).items()) if k != "img_size")
    raw = f"{device_kind}-{model}{extra}-{img_size}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)

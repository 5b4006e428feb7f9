"""Measures the cost coefficients of one model on one device: the calibration behind
`pft.cost.predict` (its docstring has the formula they feed).

A few training steps each, at a small batch, on random weights (speed does not depend on them)
and the given raw images (a dataset's, or random uint8 ones of the model's input shape):

- **prepare**: the engine's preprocessing (`pft.preprocess.prepare`), with and without
  augmentation;
- **prefix path**: the stem alone, then stem + every block, without gradients (what the one-time
  prefix pass and every frozen block cost);
- **suffix path**: the last half of the blocks and the head trained from cached tokens, every
  tensor of those blocks tuned (what one trained block costs); the head alone trained from
  pooled features (linear probing's step);
- **full path**: full fine-tuning from raw images (its remainder over blocks and head is the
  tuned stem's cost); its AdamW step is timed on its own (the cost per tuned parameter).

Each path is timed as the median of ``steps`` steps after one warm-up step (CUDA synchronised).
Memory: what autograd saves for backward, counted by `torch.autograd.graph.saved_tensors_hooks`
(parameters excluded, shared storages counted once) on every device, so the figures are exact
activation sizes on CPU as well, where no allocator statistic exists (tracemalloc does not see
torch's allocations, and a process's ru_maxrss only ever grows). On CUDA the full path's peak
(``torch.cuda.max_memory_allocated``) is also measured and its ratio to the estimate becomes
the calibration's ``memory.scale``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pft.cost.predict import CALIBRATION_VERSION
from pft.evaluation import autocast_for
from pft.model_catalog import get_spec
from pft.prefix_cache import Plan, plan_for, run_prefix, run_suffix
from pft.preprocess import data_config_for, prepare

DEFAULT_BATCH = 32
DEFAULT_STEPS = 3
_CACHEABLE = SimpleNamespace(prefix_cache=True, augment=False)  # hparams that allow caching


def device_kind(device: torch.device) -> str:
    """What a calibration is valid for: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"{device.type} ({n} thread{'' if n == 1 else 's'})"


def _device_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    from pft.cost.memory import host_memory_mb

    return host_memory_mb()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], steps: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, kernels, lazy init)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _SavedBytes:
    """Bytes autograd saves for backward inside the context (parameters excluded)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = {p.data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> _SavedBytes:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _tune(model: nn.Module, which: Callable[[str], bool]) -> list[nn.Parameter]:
    out = []
    for name, p in model.named_parameters():
        p.requires_grad_(which(name))
        if p.requires_grad:
            out.append(p)
    return out


def _optimizer(params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(params, lr=1e-6, **fast)  # as `pft.training._optimizer`


def calibrate(
    model: str,
    *,
    overrides: dict[str, Any] | None = None,
    pretrained: bool = False,
    batch_size: int = DEFAULT_BATCH,
    steps: int = DEFAULT_STEPS,
    device: torch.device | str | None = None,
    images: torch.Tensor | None = None,
    num_classes: int = 10,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The calibration of ``model`` on ``device`` (a JSON-ready dict, `pft.cost.predict`)."""
    from pft.base_model import build_pretrained

    say = progress or (lambda _msg: None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = get_spec(model, overrides)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    net = build_pretrained(model, num_classes, pretrained=pretrained, overrides=overrides)
    net = net.to(device)
    dc = data_config_for(net)
    channels, height, width = dc["input_size"]
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch_size, channels, height, width), generator=g)
        images = images.to(torch.uint8)
    raw = images[:batch_size]
    while len(raw) < batch_size:  # a tiny dataset: repeat its images
        raw = torch.cat([raw, images[: batch_size - len(raw)]])
    batch = len(raw)
    y = torch.arange(batch, device=device) % num_classes
    aug = torch.Generator().manual_seed(1)
    blocks = list(getattr(net, "blocks", []))
    depth = len(blocks) or 1
    per = 1.0 / batch

    def step(fwd: Callable[[], torch.Tensor], opt: torch.optim.Optimizer | None) -> None:
        with autocast_for(device):
            logits = fwd()
        F.cross_entropy(logits.float(), y).backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    say("preprocessing")
    prep_train = _median_seconds(lambda: prepare(raw, dc, device, augment=aug), steps, device)
    prep_eval = _median_seconds(lambda: prepare(raw, dc, device), steps, device)
    x = prepare(raw, dc, device)

    # the full path: every tensor tuned, from raw images as the engine trains
    net.train()
    params = _tune(net, lambda _n: True)
    opt = _optimizer(params, device)
    full = _median_seconds(
        lambda: step(lambda: net(prepare(raw, dc, device, augment=aug)), opt), steps, device
    )
    with autocast_for(device):
        loss = F.cross_entropy(net(x).float(), y)
    loss.backward()
    opt_time = _median_seconds(opt.step, steps, device)
    opt.zero_grad(set_to_none=True)
    full_params = sum(p.numel() for p in params)
    with _SavedBytes(net) as saved_full:
        step(lambda: net(x), None)
    net.zero_grad(set_to_none=True)
    cuda_peak = None
    if device.type == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated(device) - base_mem

    net.eval()  # frozen blocks run in eval mode (`pft.prefix_cache.frozen_modules`)
    _tune(net, lambda _n: False)
    # nothing tuned: a plan exists exactly when the model family supports prefix caching
    supported = plan_for(net, _CACHEABLE)[0] is not None
    if supported:
        say("prefix path")
        with torch.no_grad(), autocast_for(device):
            stem = _median_seconds(lambda: run_prefix(net, Plan(0, depth), x), steps, device)
            whole = _median_seconds(lambda: run_prefix(net, Plan(depth, depth), x), steps, device)
            k = depth // 2
            tokens = run_prefix(net, Plan(k, depth), x)
            features = run_prefix(net, Plan(depth, depth), x)
        # The stem costs less than the whole prefix; on a busy CPU the two timings can cross,
        # and then the stem is taken to cost what one block does.
        block_forward = (whole - stem) / depth if whole > stem else whole / (depth + 1)

        say("suffix path")
        net.train()
        for blk in blocks[:k]:
            blk.eval()

        def train_suffix(own: tuple[str, ...], plan: Plan, inputs: torch.Tensor):  # noqa: ANN202
            """Median seconds of a training step of ``plan``'s suffix with the tensors named
            ``own*`` tuned, the bytes it saves for backward, and how many parameters it tunes."""
            params = _tune(net, lambda n: n.startswith(own))
            opt = _optimizer(params, device)
            seconds = _median_seconds(
                lambda: step(lambda: run_suffix(net, plan, inputs), opt), steps, device
            )
            with _SavedBytes(net) as saved:
                step(lambda: run_suffix(net, plan, inputs), None)
            return seconds, saved, sum(p.numel() for p in params)

        head_time, saved_head, n_head = train_suffix(("head.",), Plan(depth, depth), features)
        own = ("head.", "norm.", *(f"blocks.{i}." for i in range(k, depth)))
        suffix, saved_suffix, n_suffix = train_suffix(own, Plan(k, depth), tokens)
        token_bytes = tokens[0].numel() * tokens.element_size()
        net.zero_grad(set_to_none=True)
    else:  # another family: the full path split by the usual ViT ratios (3:1 train:forward)
        stem = whole = 0.0
        n_head = n_suffix = k = 0
        head_time = suffix = 0.0
        block_forward = (full - prep_train) / (3 * depth)
        saved_head = saved_suffix = None
        token_bytes = 0
    opt_per_param = opt_time / max(full_params, 1)
    stem_forward = stem if supported else 0.0  # timed on preprocessed images
    head_train = max(head_time - opt_per_param * n_head, 0.0)
    if supported and depth > k:
        # A block's training step includes its forward pass: that much at least, when timing
        # noise on a busy CPU leaves less (or nothing) of the difference.
        measured = (suffix - opt_per_param * n_suffix - head_train) / (depth - k)
        block_train = max(measured, block_forward)
    else:
        block_train = 3 * block_forward
    full_noopt = full - opt_time
    full_extra = max(full_noopt - prep_train - depth * block_train - head_train, stem_forward)
    head_act = saved_head.bytes if saved_head else 0
    block_act = (
        max(saved_suffix.bytes - head_act, 0) / (depth - k)
        if saved_suffix and depth > k
        else saved_full.bytes / depth
    )
    stem_act = max(saved_full.bytes - depth * block_act - head_act, 0)
    input_bytes = x[0].numel() * x.element_size()
    acts = batch * (input_bytes + head_act / batch + block_act / batch * depth + stem_act / batch)
    scale, method = 1.0, "saved_tensors"
    if cuda_peak is not None:
        static = 16 * full_params
        scale = max(1.0, (cuda_peak - static) / max(acts, 1))
        method = "saved_tensors, scaled by cuda max_memory_allocated"
    return {
        "version": CALIBRATION_VERSION,
        "device_kind": device_kind(device),
        "device": str(device),
        "model": model,
        "model_overrides": dict(overrides or {}),
        "img_size": int(height),
        "batch_size": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "depth": depth,
        "prefix_cache_supported": supported,
        "device_memory_mb": _device_memory_mb(device),  # what this device kind has
        "seconds": {
            "prepare_train": prep_train * per,
            "prepare_eval": prep_eval * per,
            "stem_forward": stem_forward * per,
            "block_forward": block_forward * per,
            "block_train": block_train * per,
            "head_train": head_train * per,
            "full_extra": full_extra * per,
            "optimizer_per_param": opt_per_param,
        },
        "memory": {
            "method": method,
            "input_bytes": input_bytes,
            "stem_activation": stem_act / batch,
            "block_activation": block_act / batch,
            "head_activation": head_act / batch,
            "token_bytes": token_bytes,
            "scale": scale,
            "full_peak_mb_measured": None if cuda_peak is None else cuda_peak / 2**20,
        },
        "measured": {  # the raw paths, images per second
            "full_path": batch / full,
            "prefix_path": batch / whole if supported else None,
            "suffix_path": batch / suffix if supported and suffix else None,
        },
        "source": spec.source,
    }


def cached_calibration(
    model: str,
    *,
    overrides: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    recalibrate: bool = False,
    progress: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], bool]:
    """``(calibration, measured_now)``: the cached one for this device kind, model and image
    size, else a new one (`calibrate`, then cached)."""
    from pft.cost import cache

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    img = int(get_spec(model, overrides).overrides.get("img_size", 224))
    kind = device_kind(device)
    if not recalibrate and (cal := cache.load(kind, model, img, overrides)) is not None:
        return cal, False
    cal = calibrate(model, overrides=overrides, device=device, progress=progress, **kwargs)
    cache.save(cal)
    return cal, True

"""Frozen-prefix caching: train a partial run on the tokens its frozen blocks produce, once.

When every tuned tensor of a run sits at or above block ``b > 0`` of a plain timm
``VisionTransformer`` (the ``*_last_half`` strategies, ``angle_topk`` / ``custom`` selections
that skip the first blocks, and ``linear_probe``, whose prefix is the whole backbone up to the
pooled, normalised features), the stem and blocks ``0..b-1`` are a fixed function of the input
image. `build` computes their output once per image of each split and the run trains only the
suffix (`PrefixCache.forward`). Valid only with augmentation off (a cached token stands for one
fixed input); `plan_for` says why a run does not use it otherwise.

Frozen modules have one semantics in both paths (`frozen_modules`, applied by
`pft.training.train_mode`): a block without a tuned tensor, and the stem (patch embedding,
position and patch dropout, pre-norm, MAP pooling) when the strategy does not tune it, run in
eval mode while training: no dropout, no drop-path, no random draws. So a cached and an
uncached run compute the same function and draw the same random numbers in the suffix.

Storage (``hparams.prefix_cache_mb``): device memory when the cache fits the budget (and half
the free GPU memory), else host memory on a GPU run (up to half the available RAM), else a
memory-mapped fp16 file in the run folder (lossy: fp16 rounding; the only storage that is not
exact). Held-out and test tokens are cached too when they fit the same storage as the train
split (evaluated in the same 256-image chunks as `pft.evaluation.evaluate_split`, so their
metrics are identical). The cache is rebuilt when a run resumes; the file is deleted when the
run ends.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pft.evaluation import EVAL_BATCH, autocast_for
from pft.preprocess import prepare

CACHE_DIR = "prefix_cache"  # inside a run folder: the memory-mapped file storage
SPLITS = ("train", "heldout", "test")
_BLOCK_MODULE = re.compile(r"^(blocks|blocks_token_only)\.\d+$|^(layers|stages)\.\d+\.blocks\.\d+$")
_STEM_MODULES = ("patch_embed", "pos_drop", "patch_drop", "norm_pre", "attn_pool", "stem")
_BLOCK_PARAM = re.compile(r"^blocks\.(\d+)\.")
_HEAD_PARAM = re.compile(r"^head\.")
_VIT_METHODS = ("forward", "forward_features", "forward_head", "pool", "_pos_embed")


def frozen_modules(model: nn.Module, stem_tuned: bool) -> list[nn.Module]:
    """Modules that run in eval mode while training: blocks without a tuned tensor, and the
    stem's modules unless the strategy tunes the stem (full fine-tuning)."""
    out = [
        m
        for name, m in model.named_modules()
        if _BLOCK_MODULE.match(name) and not any(p.requires_grad for p in m.parameters())
    ]
    if not stem_tuned:
        out += [
            getattr(model, n)
            for n in _STEM_MODULES
            if isinstance(getattr(model, n, None), nn.Module)
        ]
    return out


@dataclass(frozen=True)
class Plan:
    blocks: int  # blocks in the prefix (== depth: the whole backbone, pooled features cached)
    depth: int

    @property
    def features(self) -> bool:
        return self.blocks == self.depth


def _supported(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    cls = type(model)
    return (
        isinstance(model, VisionTransformer)
        and all(getattr(cls, f, None) is getattr(VisionTransformer, f) for f in _VIT_METHODS)
        and isinstance(model.blocks, nn.Sequential)
        and not getattr(model, "grad_checkpointing", False)
    )


def plan_for(model: nn.Module, hparams: Any) -> tuple[Plan | None, str]:
    """The prefix a run can cache (from the model's ``requires_grad`` flags), or None and the
    reason it cannot."""
    if not hparams.prefix_cache:
        return None, "disabled (hparams.prefix_cache is false)"
    if hparams.augment:
        return None, "augmentation on (hparams.augment): every epoch sees new inputs"
    if not _supported(model):
        return None, f"model family {type(model).__name__} not supported (plain timm ViT only)"
    depth = len(model.blocks)
    first = depth
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = _BLOCK_PARAM.match(name)
        if m:
            first = min(first, int(m[1]))
        elif not _HEAD_PARAM.match(name):
            return None, f"the strategy tunes the stem or final norm ({name})"
    if first == 0:
        return None, "the strategy tunes block 0"
    return Plan(first, depth), ""


def run_prefix(model: nn.Module, plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """The stem and the first ``plan.blocks`` blocks (the whole backbone: pooled features)."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for blk in list(model.blocks)[: plan.blocks]:
        x = blk(x)
    if plan.features:
        x = model.fc_norm(model.pool(model.norm(x)))
    return x


def run_suffix(model: nn.Module, plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """The rest of the model's forward, from the cached tokens to the logits."""
    if plan.features:
        return model.head(model.head_drop(x))
    for blk in list(model.blocks)[plan.blocks :]:
        x = blk(x)
    return model.forward_head(model.norm(x))


def _host_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _storage(nbytes: int, device: torch.device, budget: int) -> str:
    if device.type == "cuda":
        if nbytes <= budget and nbytes <= torch.cuda.mem_get_info(device)[0] // 2:
            return "device"
        return "host" if nbytes <= _host_available() // 2 else "file"
    return "host" if nbytes <= budget else "file"


@dataclass
class PrefixCache:
    plan: Plan
    storage: str  # "device" (GPU memory), "host" (host memory), "file" (memory-mapped fp16)
    store: dict[str, Any]  # split -> (N, ...) tensor or np.memmap
    dtype: torch.dtype  # what the suffix receives
    device: torch.device
    nbytes: int
    seconds: float
    folder: Path | None = None

    def has(self, split: str) -> bool:
        return split in self.store

    def rows(self, split: str, idx: torch.Tensor | slice) -> torch.Tensor:
        """Cached tokens of the split's images ``idx`` (an index tensor or a slice), on device."""
        s = self.store[split]
        if self.storage == "file":
            i = idx if isinstance(idx, slice) else idx.numpy()
            return torch.from_numpy(np.asarray(s[i])).to(self.device).to(self.dtype)
        if self.storage == "device" and not isinstance(idx, slice):
            idx = idx.to(self.device, non_blocking=True)
        return s[idx].to(self.device, non_blocking=True)

    def forward(self, model: nn.Module, compile_: bool = False) -> Callable[[torch.Tensor], Any]:
        def suffix(x: torch.Tensor) -> torch.Tensor:
            return run_suffix(model, self.plan, x)

        return torch.compile(suffix) if compile_ else suffix

    def summary(self) -> dict[str, Any]:
        return {
            "used": True,
            "blocks": self.plan.blocks,
            "features": self.plan.features,  # the whole backbone: pooled features cached
            "images": sum(len(v) for v in self.store.values()),
            "splits": list(self.store),
            "bytes": self.nbytes,
            "seconds": self.seconds,
            "storage": self.storage,
        }

    def close(self) -> None:
        self.store.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _chunks(model, plan, split, data_config, device):
    for start in range(0, len(split), EVAL_BATCH):
        x = prepare(split.images[start : start + EVAL_BATCH], data_config, device)
        yield start, run_prefix(model, plan, x)


def build(
    model: nn.Module,
    plan: Plan,
    data: Any,
    data_config: dict[str, Any],
    device: torch.device,
    budget_mb: int,
    run_dir: Path,
) -> PrefixCache:
    """Computes the prefix tokens of every image of ``data``'s splits (in eval mode, in the
    256-image chunks of evaluation) into the storage the budget allows."""
    t0 = time.perf_counter()
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad(), autocast_for(device):
        cache = _build(model, plan, data, data_config, device, budget_mb * 2**20, Path(run_dir))
    for m, was in flags:
        m.train(was)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cache.seconds = time.perf_counter() - t0
    return cache


def _build(model, plan, data, data_config, device, budget, run_dir) -> PrefixCache:
    splits = {n: data.split(n) for n in SPLITS if len(data.split(n))}
    first = _chunks(model, plan, splits["train"], data_config, device)
    _, head = next(first)
    per_image = head[0].numel() * head.element_size()
    counts = {n: len(s) for n, s in splits.items()}
    storage = _storage(per_image * counts["train"], device, budget)
    if _storage(per_image * sum(counts.values()), device, budget) != storage:
        splits = {"train": splits["train"]}  # evaluation runs uncached
    folder = run_dir / CACHE_DIR if storage == "file" else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    store: dict[str, Any] = {}
    nbytes = 0
    for name, split in splits.items():
        shape = (len(split), *head.shape[1:])
        if storage == "file":
            store[name] = np.lib.format.open_memmap(
                folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape
            )
            nbytes += int(np.prod(shape)) * 2
        else:
            where = device if storage == "device" else torch.device("cpu")
            store[name] = torch.empty(shape, dtype=head.dtype, device=where)
            nbytes += store[name].numel() * store[name].element_size()
        chunks = first if name == "train" else _chunks(model, plan, split, data_config, device)
        if name == "train":
            _put(store[name], 0, head, storage)
        for start, tokens in chunks:
            _put(store[name], start, tokens, storage)
    return PrefixCache(plan, storage, store, head.dtype, device, nbytes, 0.0, folder)


def _put(dest: Any, start: int, tokens: torch.Tensor, storage: str) -> None:
    stop = start + len(tokens)
    if storage == "file":
        dest[start:stop] = tokens.float().cpu().numpy().astype(np.float16)
    else:
        dest[start:stop].copy_(tokens)


@torch.no_grad()
def evaluate_cached(
    model: nn.Module, cache: PrefixCache, split: str, labels: torch.Tensor
) -> dict[str, float]:
    """`pft.evaluation.evaluate_split` on cached tokens: ``{"acc", "loss"}``, same batches."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    n = len(labels)
    for start in range(0, n, EVAL_BATCH):
        y = labels[start : start + EVAL_BATCH].to(cache.device)
        x = cache.rows(split, slice(start, start + EVAL_BATCH))
        with autocast_for(cache.device):
            logits = run_suffix(model, cache.plan, x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return {"acc": correct / max(1, n), "loss": loss_sum / max(1, n)}


def not_used(reason: str) -> dict[str, Any]:
    return {"used": False, "reason": reason}

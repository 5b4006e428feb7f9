"""Partial fine-tuning of a timm ViT with one strategy: the training loop behind `pft.engine`.

Only the strategy's tensors require gradients and get AdamW state. AdamW with linear warmup and
cosine decay, label smoothing and gradient clipping; bf16 autocast, fused AdamW and optional
``torch.compile`` on CUDA, fp32 on CPU. Every random draw (data order, augmentation) comes from a
generator seeded by ``(seed, epoch, step)``, and the model's own draws (drop-path, dropout) from
torch's global RNG seeded by ``(seed, epoch, step)`` before each step (the caller's RNG state is
restored afterwards), so identical configurations give identical deltas on CPU and a run
resumed from its state (`pft.run_state`) replays exactly the steps an uninterrupted run would
take. Frozen blocks (no tuned tensor) and a frozen stem run in eval mode: no dropout or
drop-path (`pft.prefix_cache.frozen_modules`). With augmentation off and every tuned tensor at
or above block b > 0, the run trains on cached prefix tokens (`pft.prefix_cache`); the summary's
``prefix_cache`` says whether it did and why not. BatchNorm layers (hybrid CNN stems) keep
their pre-trained running statistics: they stay in eval mode, so a model rebuilt from the delta
evaluates exactly as the trained one. Weight decay skips 1-D tensors, tokens and position
embeddings, and what the model's ``no_weight_decay()`` names (relative-position bias tables,
``logit_scale``, ``cpb_mlp``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pft.angles import AngleReport, angle_rows, compute_angles, unit_rows
from pft.base_model import build_pretrained
from pft.checkpoint import delta_metadata, delta_tensors, save_delta, write_json
from pft.dataset_catalog import dataset_info, parse_shift
from pft.datasets import DatasetSplits, load_dataset
from pft.errors import PftError
from pft.evaluation import autocast_for, evaluate_shifts, evaluate_split
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.model_catalog import get_spec, unit_map_for
from pft.model_factory import compute_shape_table
from pft.prefix_cache import PrefixCache, build, evaluate_cached, frozen_modules, not_used, plan_for
from pft.preprocess import data_config_for, prepare
from pft.run_state import RunState, clear_state, load_state, save_state
from pft.strategies import Selection, resolve_strategy
from pft.units import UnitMap

CANCEL_EVERY = 5  # steps between should_cancel() / checkpoint_due() polls
NO_DECAY = ("pos_embed", "cls_token", "reg_token", "dist_token")


class Cancelled(Exception):
    """Raised when ``callbacks.should_cancel()`` returned true; the run's state was saved
    (mid-epoch: the next run of the same spec resumes at the step it stopped at)."""


@dataclass
class TrainedRun:
    """What one fine-tuning run computed (the engine's return value behind `finetune`)."""

    summary: dict[str, Any]  # metrics.json
    angles: list[dict[str, Any]]  # final angle rows, units and tensors (`angle_rows`)
    trajectory: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # unit rows
    resumed_from_epoch: int = 0  # epochs a previous attempt had completed (0: a fresh run)
    resumed_from_step: int = 0  # training steps it had completed (mid-epoch checkpoints too)


@dataclass
class _Setup:
    cfg: FinetuneSpec
    data: DatasetSplits
    unit_map: UnitMap
    selection: Selection
    model: nn.Module
    data_config: dict[str, Any]
    device: torch.device
    frozen: list[nn.Module] = field(default_factory=list)  # eval mode while training
    cache_info: dict[str, Any] = field(default_factory=dict)  # the summary's prefix_cache


def validate_hparams(h: Hparams) -> None:
    checks = [
        ("epochs", isinstance(h.epochs, int) and h.epochs >= 1, "an integer >= 1"),
        ("lr", isinstance(h.lr, int | float) and h.lr > 0, "a number > 0"),
        ("batch_size", isinstance(h.batch_size, int) and h.batch_size >= 1, "an integer >= 1"),
        ("weight_decay", h.weight_decay >= 0, "a number >= 0"),
        ("warmup_fraction", 0 <= h.warmup_fraction < 1, "a number in [0, 1)"),
        ("label_smoothing", 0 <= h.label_smoothing < 1, "a number in [0, 1)"),
        ("clip_grad", h.clip_grad >= 0, "a number >= 0 (0 disables clipping)"),
        ("augment", isinstance(h.augment, bool), "true or false"),
        ("prefix_cache", isinstance(h.prefix_cache, bool), "true or false"),
        (
            "prefix_cache_mb",
            isinstance(h.prefix_cache_mb, int) and h.prefix_cache_mb >= 0,
            "an integer >= 0 (MB)",
        ),
    ]
    for name, ok, accepted in checks:
        if not ok:
            raise PftError(f"hparams.{name} must be {accepted}, got {getattr(h, name)!r}")


def setup(
    cfg: FinetuneSpec, device: torch.device | str | None = None, train_limit: int | None = None
) -> _Setup:
    """Validates a config and builds everything a run needs (raises PftError on bad input)."""
    dataset_info(cfg.dataset)
    spec = get_spec(cfg.model, cfg.model_overrides)
    validate_hparams(cfg.hparams)
    for s in cfg.shifts:
        parse_shift(s)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_dataset(cfg.dataset, image_size=int(spec.overrides.get("img_size", 224)))
    if train_limit is not None:
        data = DatasetSplits(
            data.name,
            data.classes,
            *(_take(data.split(n), train_limit) for n in ("train", "heldout", "test")),
        )
    unit_map = unit_map_for(
        cfg.model, data.num_classes, cfg.model_overrides, compute=compute_shape_table
    )
    selection = resolve_strategy(unit_map, cfg.strategy, **cfg.strategy_params)
    model = build_pretrained(
        cfg.model,
        data.num_classes,
        pretrained=cfg.pretrained,
        overrides=cfg.model_overrides,
        head_seed=cfg.hparams.head_seed,
    )
    names = {n for n, _ in model.named_parameters()}
    if names != set(unit_map.shapes):  # internal invariant: the unit map describes this model
        raise RuntimeError(f"unit map of {cfg.model} does not match the built model")
    tuned = set(selection.tensors)
    for name, p in model.named_parameters():
        p.requires_grad_(name in tuned)
    frozen = frozen_modules(model, stem_tuned=bool(tuned & set(unit_map.stem)))
    return _Setup(
        cfg, data, unit_map, selection, model.to(device), data_config_for(model), device, frozen
    )


def _take(split, n: int):
    from pft.datasets import Split

    return Split(split.images[:n], split.labels[:n])


def _seed(*parts: int) -> int:
    h = 0x9E3779B9
    for p in parts:
        h = (h * 1_000_003 + p + 7) % (2**63 - 1)
    return h


def _lr_at(step: int, total: int, h: Hparams) -> float:
    warmup = round(h.warmup_fraction * total)
    if step < warmup:
        return h.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return h.lr * 0.5 * (1 + math.cos(math.pi * progress))


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters trained without weight decay: 1-D tensors, tokens and position embeddings,
    and what the model's ``no_weight_decay()`` names (a parameter, or a module prefix)."""
    own = getattr(model, "no_weight_decay", None)
    listed = set(own()) if callable(own) else set()
    out = set()
    for name, p in model.named_parameters():
        leaf = name.split(".")[-1]
        if (
            p.ndim <= 1
            or leaf in NO_DECAY
            or name in listed
            or leaf in listed
            or any(name.startswith(f"{x}.") for x in listed)
        ):
            out.add(name)
    return out


def _optimizer(s: _Setup) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    plain = no_decay_names(s.model)
    for name, p in s.model.named_parameters():
        if p.requires_grad:
            (no_decay if name in plain else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": s.cfg.hparams.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fast = {"fused": True} if s.device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=s.cfg.hparams.lr, **fast)


def _angles(pre: dict[str, torch.Tensor], model: nn.Module, unit_map: UnitMap):
    finetuned = dict(model.named_parameters())
    pretrained = {n: pre.get(n, p) for n, p in finetuned.items()}
    return compute_angles(pretrained, finetuned, unit_map)


def train_mode(model: nn.Module, frozen: list[nn.Module] | tuple = ()) -> None:
    """Train mode, except BatchNorm layers: their running statistics stay the pre-trained ones
    (frozen or tuned: the statistics are not trained, only the affine parameters; a tuned
    module's buffers still go into the delta, unchanged); and except the
    ``frozen`` modules (`pft.prefix_cache.frozen_modules`): deterministic, no random draws."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    for m in frozen:
        m.eval()


def _call(callbacks: Any, name: str, *args: Any) -> Any:
    fn = getattr(callbacks, name, None) if callbacks is not None else None
    return fn(*args) if fn is not None else None


def finetune(
    cfg: FinetuneSpec,
    out_dir: str | Path,
    *,
    device: torch.device | str | None = None,
    callbacks: Any = None,
    train_limit: int | None = None,
) -> dict[str, Any]:
    """Fine-tunes and writes ``delta.safetensors``, ``metrics.json``, ``angles.json``; returns
    the summary (``metrics.json``). `train` returns everything else the run computed."""
    return train(cfg, out_dir, device=device, callbacks=callbacks, train_limit=train_limit).summary


def train(
    cfg: FinetuneSpec,
    out_dir: str | Path,
    *,
    device: torch.device | str | None = None,
    callbacks: Any = None,
    train_limit: int | None = None,
) -> TrainedRun:
    """Fine-tunes ``cfg`` in ``out_dir``; returns the summary, angle rows and trajectory.

    Resumes from ``out_dir/state/`` when a previous run of the same spec left one there; a
    finished run (``metrics.json`` of the same spec) is returned without training.
    ``train_limit`` keeps only the first N images of each split (smoke runs and tests).
    Callbacks (all optional): ``on_progress(info)``, ``on_epoch(epoch, metrics, rows)`` with
    the epoch's angle rows (units and tensors), called once the epoch's state is saved,
    ``should_cancel()`` (True raises `Cancelled` after saving the state, mid-epoch), and
    ``checkpoint_due()`` (True saves a mid-epoch state, then calls ``on_checkpoint(epoch,
    step)``); both are polled every `CANCEL_EVERY` steps. A run resumed from any of these
    states ends bit-identical to an uninterrupted one: every random draw is seeded per step,
    and the epoch's running loss is kept as the float32 sum it is on the device.
    """
    out_dir = Path(out_dir)
    done = out_dir / "metrics.json"
    if done.is_file() and (out_dir / "delta.safetensors").is_file():
        summary = json.loads(done.read_text())
        if _same_config(summary.get("config"), cfg):
            return _finished(out_dir, summary)
        raise PftError(
            f"{out_dir} holds a finished run with a different configuration; choose another "
            "output folder or delete that one"
        )
    s = setup(cfg, device, train_limit)
    h = cfg.hparams
    model, tuned = s.model, list(s.selection.tensors)
    pre = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(s)
    total = h.epochs * math.ceil(len(s.data.train) / h.batch_size)
    st = load_state(out_dir / "state", cfg.to_dict(), model, opt, s.device) or RunState()
    resumed = (st.epoch, st.global_step)
    compile_ = h.compile and s.device.type == "cuda"
    plan, reason = plan_for(model, h)
    cache = None
    if plan is not None and st.epoch >= h.epochs:
        plan, reason = None, "no epoch left to train (resumed after the last one)"
    if plan is not None:  # rebuilt when a run resumes
        cache = build(model, plan, s.data, s.data_config, s.device, h.prefix_cache_mb, out_dir)
    s.cache_info = cache.summary() if cache is not None else not_used(reason)
    if cache is not None:
        fwd = cache.forward(model, compile_)
    else:
        fwd = torch.compile(model) if compile_ else model
    rng_devices = [s.device.index or 0] if s.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):  # the caller's RNG state is restored
            _epochs(s, out_dir, st, pre, fwd, tuned, params, opt, callbacks, total, cache)
    finally:
        if cache is not None:
            cache.close()
    return _finish(s, out_dir, st, pre, resumed)


def _same_config(saved: Any, cfg: FinetuneSpec) -> bool:
    """``saved`` (a stored ``to_dict()``) is ``cfg``, fields added since filled by defaults."""
    try:
        return FinetuneSpec.from_dict(saved).to_dict() == cfg.to_dict()
    except (PftError, TypeError, AttributeError):
        return False


def _epochs(
    s: _Setup,
    out_dir: Path,
    st: RunState,
    pre: dict[str, torch.Tensor],
    fwd: Any,
    tuned: list[str],
    params: list[torch.Tensor],
    opt: torch.optim.Optimizer,
    callbacks: Any,
    total: int,
    cache: PrefixCache | None = None,
) -> None:
    """The epochs still to run (every global RNG draw seeded per step, see the docstring)."""
    cfg, h, model = s.cfg, s.cfg.hparams, s.model
    n = len(s.data.train)
    steps_per_epoch = math.ceil(n / h.batch_size)
    info = dataset_info(cfg.dataset)
    train_mode(model, s.frozen)
    t_window, n_window = time.perf_counter(), 0
    for epoch in range(st.epoch, h.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(h.seed, epoch)))
        t_epoch = time.perf_counter()
        # This epoch's summed train loss, in float32 on the device (no per-step host sync); a
        # mid-epoch state holds its exact value, so a resumed epoch sums the same numbers.
        loss_acc = torch.tensor(st.loss_sum, dtype=torch.float32, device=s.device)
        first = st.step_in_epoch
        for step in range(first, steps_per_epoch):
            if step % CANCEL_EVERY == 0:
                if _call(callbacks, "should_cancel"):
                    st.loss_sum = float(loss_acc)
                    save_state(out_dir / "state", st, cfg.to_dict(), model, tuned, opt)
                    raise Cancelled(f"cancelled at epoch {epoch + 1}, step {step}")
                if step > first and _call(callbacks, "checkpoint_due"):
                    st.loss_sum = float(loss_acc)
                    save_state(out_dir / "state", st, cfg.to_dict(), model, tuned, opt)
                    _call(callbacks, "on_checkpoint", epoch + 1, step)
            idx = order[step * h.batch_size : (step + 1) * h.batch_size]
            if cache is not None:
                x = cache.rows("train", idx)
            else:
                g = torch.Generator().manual_seed(_seed(h.seed, epoch, step))
                x = prepare(
                    s.data.train.images[idx],
                    s.data_config,
                    s.device,
                    augment=g if h.augment else None,
                    hflip=info.hflip,
                )
            y = s.data.train.labels[idx].to(s.device, non_blocking=True)
            torch.manual_seed(_seed(h.seed, epoch, step, 1))  # drop-path, dropout
            for group in opt.param_groups:
                group["lr"] = _lr_at(st.global_step, total, h)
            with autocast_for(s.device):
                logits = fwd(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=h.label_smoothing)
            loss.backward()
            if h.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, h.clip_grad, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_acc += loss.detach() * len(idx)  # no per-step host sync on CUDA
            st.seen += len(idx)
            st.global_step += 1
            st.step_in_epoch = step + 1
            n_window += len(idx)
            if st.global_step % max(1, total // 200) == 0 or st.global_step == total:
                now = time.perf_counter()
                _call(
                    callbacks,
                    "on_progress",
                    {
                        "epoch": epoch + 1,
                        "step": st.global_step,
                        "total_steps": total,
                        "progress": st.global_step / total,
                        "images_per_sec": n_window / max(now - t_window, 1e-9),
                    },
                )
                t_window, n_window = now, 0
        st.train_seconds += time.perf_counter() - t_epoch
        st.train_images += n
        st.loss_sum = float(loss_acc)
        metrics = {"epoch": epoch + 1, "train_loss": st.loss_sum / max(1, st.seen)}
        for name in ("heldout", "test"):
            split = s.data.split(name)
            if cache is not None and cache.has(name):
                m = evaluate_cached(model, cache, name, split.labels)
            else:
                m = evaluate_split(model, split, s.data_config, s.device)
            metrics |= {f"{name}_acc": m["acc"], f"{name}_loss": m["loss"]}
        train_mode(model, s.frozen)  # evaluation restores plain train mode
        metrics["images_per_sec"] = st.train_images / max(st.train_seconds, 1e-9)
        report = _angles(pre, model, s.unit_map)
        st.history.append(metrics)
        st.trajectory.append(
            {"epoch": epoch + 1, "units": report.units, "rel_change": report.rel_change}
        )
        st.epoch, st.step_in_epoch, st.loss_sum, st.seen = epoch + 1, 0, 0.0, 0
        save_state(out_dir / "state", st, cfg.to_dict(), model, tuned, opt)
        _call(callbacks, "on_epoch", epoch + 1, metrics, report.rows(s.unit_map))


def _trajectory(
    points: list[dict], unit_map: UnitMap | None = None, where: dict | None = None
) -> dict[int, list[dict[str, Any]]]:
    return {
        int(p["epoch"]): unit_rows(p["units"], p.get("rel_change") or {}, unit_map, where)
        for p in points
    }


def _finished(out_dir: Path, summary: dict[str, Any]) -> TrainedRun:
    """A run that an earlier call finished: its results, as that call returned them."""
    angles = json.loads((out_dir / "angles.json").read_text())
    where = {u["name"]: (u.get("group"), u.get("block")) for u in angles.get("units", [])}
    return TrainedRun(
        summary=summary,
        angles=angle_rows(angles),
        trajectory=_trajectory(angles.get("trajectory", []), where=where),
        resumed_from_epoch=len(summary.get("epochs", [])),
    )


def _finish(
    s: _Setup,
    out_dir: Path,
    st: RunState,
    pre: dict[str, torch.Tensor],
    resumed: tuple[int, int],
) -> TrainedRun:
    cfg, model = s.cfg, s.model
    shifts = evaluate_shifts(model, s.data.test, s.data_config, s.device, cfg.shifts)
    report: AngleReport = _angles(pre, model, s.unit_map)
    meta = delta_metadata(
        base_model=cfg.model,
        model_overrides=cfg.model_overrides,
        pretrained=cfg.pretrained,
        num_classes=s.data.num_classes,
        strategy=cfg.strategy,
        strategy_params=s.selection.params,
        dataset=cfg.dataset,
        data_config=s.data_config,
        hparams=cfg.hparams.to_dict(),
    )
    # the tuned parameters and the buffers of the modules that own them (`delta_tensors`)
    save_delta(out_dir / "delta.safetensors", delta_tensors(model, s.selection.tensors), meta)
    angles = {
        "model": cfg.model,
        "strategy": cfg.strategy,
        **report.to_dict(s.unit_map),
        "trajectory": st.trajectory,
    }
    write_json(out_dir / "angles.json", angles)
    last = st.history[-1]
    summary = {
        "config": cfg.to_dict(),
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "dataset": cfg.dataset,
        "num_classes": s.data.num_classes,
        "strategy": s.selection.to_dict(),
        "device": str(s.device),
        "heldout_acc": last["heldout_acc"],
        "test_acc": last["test_acc"],
        "heldout_loss": last["heldout_loss"],
        "test_loss": last["test_loss"],
        "shifts": shifts,
        "images_per_sec": last["images_per_sec"],
        "train_seconds": st.train_seconds,
        "prefix_cache": s.cache_info,
        "epochs": st.history,
        "files": dict(FILES),
    }
    write_json(out_dir / "metrics.json", summary)
    clear_state(out_dir / "state")
    return TrainedRun(
        summary=summary,
        angles=report.rows(s.unit_map),
        trajectory=_trajectory(st.trajectory, s.unit_map),
        resumed_from_epoch=resumed[0],
        resumed_from_step=resumed[1],
    )


FILES = {"delta": "delta.safetensors", "metrics": "metrics.json", "angles": "angles.json"}

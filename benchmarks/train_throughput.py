"""Training throughput: engine vs a plain loop, and every strategy cached vs uncached vs full.

    .venv/bin/python benchmarks/train_throughput.py --json                # CPU defaults
    .venv/bin/python benchmarks/train_throughput.py --device cuda --synthetic 4096 \\
        --model vit_base_patch16_224 --img-size 224 --batch-size 128 --compile --json

In one run, on the same model, data and batch:
1. ``engine_vs_plain``: images/s of `pft.engine.finetune` with its defaults (training steps
   only: on-device preprocessing and augmentation, LR schedule, callbacks, cancel polls; the
   per-epoch evaluation is excluded) over those of a plain loop written here (timm model,
   torch.optim.AdamW with default settings, eager, inputs preprocessed once in advance, bf16
   autocast on CUDA), best of ``--repeats``. Target: >= 1.0 on CPU, >= 1.25 on a GPU.
2. per strategy, augmentation off (the cache's condition), the engine uncached
   (``prefix_cache=False``) and, where the strategy leaves a frozen prefix, cached: images/s of
   the training steps, peak memory (CUDA: peak allocated; CPU: peak resident set size of a fresh
   process per run, reset through /proc/self/clear_refs, so it includes the cache) and the
   one-time prefix pass (images/s). ``speedup`` is the 10-epoch run computed from those parts
   (one prefix pass + 10 cached epochs against 10 uncached epochs), ``vs_full`` the same cached
   run against 10 uncached epochs of full fine-tuning; a strategy that cannot be cached runs
   uncached (``speedup`` 1, ``prefix_cache`` says why). CPU targets (built-in backbone shape,
   batch 128): the three ``*_last_half`` strategies >= 1.25x, ``blocks_last_half`` >= 1.9x full,
   ``linear_probe`` >= 5x.
With ``--compile`` (CUDA), the engine's full fine-tuning and the ``--compile-cached``
strategies (cached) are also timed under torch.compile. ``--synthetic N`` writes N random
uint8 images as an image folder in a temporary data folder (no downloads). Models are built
with random weights (``pretrained=False``), which does not change speed.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

from pft.strategies import FULL_FINETUNING
from pft.strategies import STRATEGIES as REGISTRY

# The strategies that need no parameters: full, linear probe and the paper's eight.
STRATEGIES = tuple(name for name, s in REGISTRY.items() if not s.params)
EPOCHS = 10  # the projected run: one prefix pass + EPOCHS cached epochs vs EPOCHS uncached
SYNTHETIC = "bench_synthetic"  # the image folder --synthetic writes


def _say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _cfg(args, strategy: str, *, compile_=False, augment=True, cache=False):
    from pft.jobs.specs import FinetuneSpec, Hparams

    overrides = {"img_size": args.img_size} if args.img_size else {}
    hp = Hparams(
        epochs=1,
        batch_size=args.batch_size,
        lr=1e-4,
        compile=compile_,
        augment=augment,
        prefix_cache=cache,
        prefix_cache_mb=args.cache_mb,
    )
    return FinetuneSpec(
        model=args.model,
        dataset=args.dataset,
        strategy=strategy,
        hparams=hp,
        pretrained=False,
        model_overrides=overrides,
    )


def _load(args, cfg):
    """The run's dataset, loaded once per process (an image folder is re-read on every call,
    so the engine's loader is memoised here)."""
    from pft import training
    from pft.model_catalog import get_spec

    if not hasattr(training.load_dataset, "cache_info"):
        training.load_dataset = functools.cache(training.load_dataset)
    size = int(get_spec(cfg.model, cfg.model_overrides).overrides.get("img_size", 224))
    return training.load_dataset(cfg.dataset, image_size=size)  # the call `setup` makes


def engine_throughput(args, strategy: str, **kw) -> dict:
    """Images/s of the engine's training steps, peak memory and the prefix cache's summary,
    measured in this process."""
    from pft.engine import finetune

    n = args.batch_size * (args.steps + args.warmup)
    times: list[tuple[int, float]] = []

    class Clock:
        def on_progress(self, info):
            times.append((info["step"], time.perf_counter()))

    cfg = _cfg(args, strategy, **kw)
    _load(args, cfg)  # the dataset is not part of the training peak
    base = _reset_peak(args.device)
    with tempfile.TemporaryDirectory() as out:
        summary = finetune(cfg, Path(out), device=args.device, callbacks=Clock(), train_limit=n)
    peak = _peak_mb(args.device) - base
    # steady state: from the end of the warm-up steps to the last step
    (s0, t0), (s1, t1) = next(x for x in times if x[0] >= args.warmup), times[-1]
    info = summary["prefix_cache"]
    out = {"images_per_sec": (s1 - s0) * args.batch_size / (t1 - t0), "peak_mem_mb": peak}
    out["prefix_cache"] = info
    if info.get("used"):
        out["prefix_images_per_sec"] = info["images"] / max(info["seconds"], 1e-9)
    return out


def plain_throughput(args, strategy: str) -> float:
    """A plain training loop: what one would write by hand with timm and torch."""
    import torch
    import torch.nn.functional as F

    from pft.base_model import build_pretrained
    from pft.model_catalog import unit_map_for
    from pft.model_factory import compute_shape_table
    from pft.preprocess import data_config_for, prepare
    from pft.strategies import resolve_strategy

    cfg = _cfg(args, strategy)
    data = _load(args, cfg)
    device = torch.device(args.device)
    model = (
        build_pretrained(
            cfg.model, data.num_classes, pretrained=False, overrides=cfg.model_overrides
        )
        .to(device)
        .train()
    )
    tuned = set(
        resolve_strategy(
            unit_map_for(
                cfg.model, data.num_classes, cfg.model_overrides, compute=compute_shape_table
            ),
            strategy,
        ).tensors
    )
    for name, p in model.named_parameters():
        p.requires_grad_(name in tuned)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    n = args.batch_size * (args.steps + args.warmup)
    x_all = prepare(data.train.images[:n], data_config_for(model), device)
    y_all = data.train.labels[:n].to(device)
    t0 = 0.0
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        x = x_all[step * args.batch_size : (step + 1) * args.batch_size]
        y = y_all[step * args.batch_size : (step + 1) * args.batch_size]
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(x)
        else:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        float(loss.detach())  # a plain loop logs its loss every step
    _sync(device)
    ips = args.steps * args.batch_size / (time.perf_counter() - t0)
    del model, opt, x_all
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ips


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> float:
    """Resets the peak-memory counter; returns the current use in MB (the baseline)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS) to VmRSS
    return _proc_status_mb("VmRSS")


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mb("VmHWM")


def _proc_status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def _child(args, strategy, kw, queue) -> None:
    queue.put(engine_throughput(args, strategy, **kw))


def measure(args, strategy: str, **kw) -> dict:
    """In this process on CUDA; on CPU in a fresh one (peak RSS never goes down)."""
    if args.device.startswith("cuda"):
        return engine_throughput(args, strategy, **kw)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(args, strategy, kw, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    return result


@functools.cache
def _cpu_setup(model: str, overrides: str, dataset: str):
    from pft.jobs.specs import FinetuneSpec
    from pft.training import setup

    spec = FinetuneSpec(model, dataset, pretrained=False, model_overrides=json.loads(overrides))
    return setup(spec, "cpu", train_limit=1)


def cacheable(args, strategy: str) -> tuple[bool, str]:
    """Whether the engine would cache this strategy's prefix (augmentation off), and why not."""
    from pft.prefix_cache import plan_for
    from pft.strategies import resolve_strategy

    cfg = _cfg(args, strategy, augment=False, cache=True)
    s = _cpu_setup(cfg.model, json.dumps(cfg.model_overrides), cfg.dataset)
    tuned = set(resolve_strategy(s.unit_map, strategy).tensors)
    for name, p in s.model.named_parameters():
        p.requires_grad_(name in tuned)
    plan, reason = plan_for(s.model, cfg.hparams)
    return plan is not None, reason


def project(uncached_ips: float, cached_ips: float, prefix_ips: float) -> tuple[float, float]:
    """Seconds per training image of the projected run: (uncached, cached)."""
    return EPOCHS / uncached_ips, 1 / prefix_ips + EPOCHS / cached_ips


def strategy_rows(args, plain: float) -> dict:
    names = [s for s in args.strategies.split(",") if s]
    if FULL_FINETUNING not in names:
        names.insert(0, FULL_FINETUNING)  # vs_full needs it
    compiled = {s for s in args.compile_cached.split(",") if s} if args.compile else set()
    rows: dict[str, dict] = {}
    for name in names:
        _say(f"  {name}: uncached ...")
        unc = measure(args, name, augment=False, cache=False)
        row = {"uncached_ips": unc["images_per_sec"], "uncached_peak_mb": unc["peak_mem_mb"]}
        ok, reason = cacheable(args, name)
        if ok and args.cached != "auto" and name not in args.cached.split(","):
            ok, reason = False, "not measured (not in --cached)"
        if ok:
            _say(f"  {name}: cached ...")
            c = measure(args, name, augment=False, cache=True)
            row |= {
                "cached_ips": c["images_per_sec"],
                "cached_peak_mb": c["peak_mem_mb"],
                "prefix_ips": c.get("prefix_images_per_sec"),
                "prefix_cache": c["prefix_cache"],
            }
            if name in compiled:
                _say(f"  {name}: cached, compiled ...")
                cc = measure(args, name, augment=False, cache=True, compile_=True)
                row["cached_compiled_ips"] = cc["images_per_sec"]
        else:
            row |= {"cached_ips": None, "prefix_cache": {"used": False, "reason": reason}}
        rows[name] = row
    full = rows[FULL_FINETUNING]["uncached_ips"]
    for row in rows.values():
        unc_t = EPOCHS / row["uncached_ips"]
        if row["cached_ips"] and row.get("prefix_ips"):
            _, cached_t = project(row["uncached_ips"], row["cached_ips"], row["prefix_ips"])
            row["peak_mb"] = row["cached_peak_mb"]
        else:
            cached_t = unc_t
            row["peak_mb"] = row["uncached_peak_mb"]
        row["speedup"] = unc_t / cached_t
        row["vs_full"] = (EPOCHS / full) / cached_t
        best = max(row["uncached_ips"], row["cached_ips"] or 0, row.get("cached_compiled_ips") or 0)
        row["vs_plain"] = best / plain  # steady-state steps only, no prefix pass
        if row.get("cached_compiled_ips"):
            row["cached_compiled_vs_plain"] = row["cached_compiled_ips"] / plain
    return rows


def write_synthetic(root: Path, n: int, classes: int = 10, side: int = 8) -> None:
    """``n`` random ``side``-pixel RGB PNGs in ``root/datasets/SYNTHETIC/train|test/<class>/``
    (the loader resizes them to the model's input once)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", max(classes, n // 16))):
        for i in range(count):
            folder = root / "datasets" / SYNTHETIC / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pft/vit-tiny-fmnist")
    p.add_argument("--dataset", default="fashion_mnist_a")
    p.add_argument("--synthetic", type=int, default=0, help="N random images (no downloads)")
    p.add_argument("--img-size", type=int, default=None, help="timm img_size override")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batch-sizes", default="", help="several, one after the other: 128,256")
    p.add_argument("--steps", type=int, default=12, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="best of N for engine vs plain")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    p.add_argument("--compile-cached", default="", help="cached strategies to time compiled")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--cached", default="auto", help="'auto' (where valid) or a list")
    p.add_argument("--cache-mb", type=int, default=65536, help="hparams.prefix_cache_mb")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.synthetic:
        root = Path(tempfile.mkdtemp(prefix="pft-bench-"))
        os.environ["PFT_DATA_DIR"] = str(root)
        write_synthetic(root, args.synthetic)
        args.dataset = f"imagefolder:{SYNTHETIC}"
    t0 = time.perf_counter()
    sizes = [int(b) for b in args.batch_sizes.split(",") if b] or [args.batch_size]
    if len(sizes) == 1:
        args.batch_size = sizes[0]
        results = run(args)
    else:  # one process, one result per batch size
        results = {"runs": {}}
        for size in sizes:
            args.batch_size = size
            results["runs"][str(size)] = run(args)
    results["seconds"] = time.perf_counter() - t0
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)


def run(args) -> dict:
    import torch

    from pft.training import setup

    _load(args, _cfg(args, FULL_FINETUNING))
    # build once so that shape tables are cached before any timing
    setup(_cfg(args, FULL_FINETUNING), args.device, train_limit=args.batch_size)
    cuda = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine,
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "device": args.device,
        "steps": args.steps,
        "epochs_projected": EPOCHS,
    }
    # alternate the two loops and keep the best of each: the CPU may be shared
    plains, engines = [], []
    for _ in range(args.repeats):
        plains.append(plain_throughput(args, FULL_FINETUNING))
        engines.append(engine_throughput(args, FULL_FINETUNING)["images_per_sec"])
    plain, engine = max(plains), max(engines)
    results |= {
        "plain_full_ips": plain,
        "engine_full_ips": engine,
        "engine_vs_plain": engine / plain,
    }
    _say(f"{machine}, {args.model}, batch {args.batch_size}")
    _say(f"full: plain {plain:,.0f} img/s, engine {engine:,.0f} img/s ({engine / plain:.2f}x)")
    if args.compile and cuda:
        comp = engine_throughput(args, FULL_FINETUNING, compile_=True)["images_per_sec"]
        results |= {"engine_compiled_full_ips": comp, "engine_compiled_vs_plain": comp / plain}
        _say(f"engine + torch.compile {comp:,.0f} img/s ({comp / plain:.2f}x)")
    rows = strategy_rows(args, plain)
    results["strategies"] = rows
    _say(f"{'strategy':<19}{'uncached':>10}{'cached':>9}{'speedup':>9}{'vs full':>9}{'peak MB':>9}")
    for name, r in rows.items():
        cached = f"{r['cached_ips']:,.0f}" if r["cached_ips"] else "-"
        _say(
            f"{name:<19}{r['uncached_ips']:>10,.0f}{cached:>9}{r['speedup']:>9.2f}"
            f"{r['vs_full']:>9.2f}{r['peak_mb']:>9,.0f}"
        )
    return results


if __name__ == "__main__":
    main()

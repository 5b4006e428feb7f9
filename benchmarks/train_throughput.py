"""Training throughput: the pft engine against a plain PyTorch loop, and every strategy vs full.

    .venv/bin/python benchmarks/train_throughput.py                       # CPU defaults
    .venv/bin/python benchmarks/train_throughput.py --device cuda \\
        --model vit_base_patch16_224 --img-size 224 --batch-size 128 --steps 30 --compile

In one run, on the same model, data, strategy and batch:
1. engine / plain: images per second of `pft.engine.finetune` (training steps only; its
   per-epoch evaluation is excluded) over those of a plain loop written here (timm model,
   torch.optim.AdamW with default settings, eager, inputs preprocessed once in advance, bf16
   autocast on CUDA). Target: >= 1.0 on CPU, >= 1.25 on a GPU for full fine-tuning.
2. every built-in strategy against ``full``: images per second and peak training memory above
   what the process held before training (CUDA: peak allocated; CPU: peak resident set size,
   reset through /proc/self/clear_refs, in a fresh process per strategy).
Models are built with random weights (``pretrained=False``), which does not change speed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from pft.strategies import FULL_FINETUNING
from pft.strategies import STRATEGIES as REGISTRY

# The strategies that need no parameters: full, linear probe and the paper's eight.
STRATEGIES = tuple(name for name, s in REGISTRY.items() if not s.params)


def _cfg(args, strategy: str, compile_: bool):
    from pft.jobs.specs import FinetuneSpec, Hparams

    overrides = {"img_size": args.img_size} if args.img_size else {}
    return FinetuneSpec(
        model=args.model,
        dataset=args.dataset,
        strategy=strategy,
        hparams=Hparams(epochs=1, batch_size=args.batch_size, lr=1e-4, compile=compile_),
        pretrained=False,
        model_overrides=overrides,
    )


def engine_throughput(args, strategy: str, compile_: bool = False) -> dict:
    """Images/s of the engine's training steps and peak memory, measured in this process."""
    from pft.datasets import load_dataset
    from pft.engine import finetune

    n = args.batch_size * (args.steps + args.warmup)
    times: list[tuple[int, float]] = []

    class Clock:
        def on_progress(self, info):
            times.append((info["step"], time.perf_counter()))

    load_dataset(args.dataset)  # cached: the dataset is not part of the training peak
    base = _reset_peak(args.device)
    with tempfile.TemporaryDirectory() as out:
        finetune(
            _cfg(args, strategy, compile_),
            Path(out),
            device=args.device,
            callbacks=Clock(),
            train_limit=n,
        )
    # steady state: from the end of the warm-up steps to the last step
    (s0, t0), (s1, t1) = next(x for x in times if x[0] >= args.warmup), times[-1]
    ips = (s1 - s0) * args.batch_size / (t1 - t0)
    # peak memory above what the process held before training (model, data, torch)
    return {"images_per_sec": ips, "peak_mem_mb": _peak_mb(args.device) - base}


def plain_throughput(args, strategy: str) -> float:
    """A plain training loop: what one would write by hand with timm and torch."""
    import torch
    import torch.nn.functional as F

    from pft.base_model import build_pretrained
    from pft.datasets import load_dataset
    from pft.model_catalog import unit_map_for
    from pft.model_factory import compute_shape_table
    from pft.preprocess import data_config_for, prepare
    from pft.strategies import resolve_strategy

    cfg = _cfg(args, strategy, False)
    data = load_dataset(args.dataset)
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
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> float:
    """Resets the peak-memory counter; returns the current use in MB (the baseline)."""
    import torch

    if device.startswith("cuda"):
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


def _child(args, strategy, queue) -> None:
    queue.put(engine_throughput(args, strategy))


def strategy_in_fresh_process(args, strategy: str) -> dict:
    """CPU peak RSS is per process and never goes down: measure each strategy in its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(args, strategy, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pft/vit-tiny-fmnist")
    p.add_argument("--dataset", default="fashion_mnist_a")
    p.add_argument("--img-size", type=int, default=None, help="timm img_size override")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="best of N for engine vs plain")
    p.add_argument("--compile", action="store_true", help="also time the engine with compile")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()

    import torch

    from pft.training import setup

    # build once so that shape tables are cached before any timing
    setup(_cfg(args, FULL_FINETUNING, False), args.device, train_limit=args.batch_size)
    machine = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else (f"CPU, {torch.get_num_threads()} threads")
    )
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "model": args.model,
        "batch_size": args.batch_size,
        "device": args.device,
    }
    # alternate the two loops and keep the best of each: the CPU may be shared
    plains, engines = [], []
    for _ in range(args.repeats):
        plains.append(plain_throughput(args, FULL_FINETUNING))
        engines.append(engine_throughput(args, FULL_FINETUNING))
    plain = max(plains)
    engine = max(engines, key=lambda r: r["images_per_sec"])
    results["plain_full_images_per_sec"] = plain
    results["engine_full_images_per_sec"] = engine["images_per_sec"]
    results["engine_over_plain"] = engine["images_per_sec"] / plain
    print(f"{machine}, {args.model}, batch {args.batch_size}")
    print(
        f"full fine-tuning: plain loop {plain:,.0f} img/s, engine "
        f"{engine['images_per_sec']:,.0f} img/s, ratio {results['engine_over_plain']:.2f}"
    )
    if args.compile and args.device.startswith("cuda"):
        comp = engine_throughput(args, FULL_FINETUNING, compile_=True)
        results["engine_compiled_images_per_sec"] = comp["images_per_sec"]
        results["engine_compiled_over_plain"] = comp["images_per_sec"] / plain
        print(
            f"engine + torch.compile {comp['images_per_sec']:,.0f} img/s, ratio "
            f"{results['engine_compiled_over_plain']:.2f}"
        )
    rows = {}
    for strategy in args.strategies.split(","):
        if args.device.startswith("cuda"):
            rows[strategy] = engine_throughput(args, strategy)
        else:
            rows[strategy] = strategy_in_fresh_process(args, strategy)
    full = rows.get(FULL_FINETUNING) or engine
    print(f"{'strategy':<20}{'img/s':>10}{'vs full':>9}{'peak MB':>10}{'vs full':>9}")
    for name, r in rows.items():
        r["speed_vs_full"] = r["images_per_sec"] / full["images_per_sec"]
        r["memory_vs_full"] = r["peak_mem_mb"] / full["peak_mem_mb"]
        print(
            f"{name:<20}{r['images_per_sec']:>10,.0f}{r['speed_vs_full']:>9.2f}"
            f"{r['peak_mem_mb']:>10,.0f}{r['memory_vs_full']:>9.2f}"
        )
    results["strategies"] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

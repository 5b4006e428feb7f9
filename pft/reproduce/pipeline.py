"""`pft reproduce` end to end: run (or resume) a preset, analyse it, draw the figures and write
the report, saying which preset produced the numbers and what the full preset would add."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from pft.errors import PftError
from pft.reproduce.analysis import DatasetAnalysis, analyse_dataset
from pft.reproduce.estimate import dataset_sizes, estimate_seconds, measure_rates
from pft.reproduce.executor import Log, run_study
from pft.reproduce.plan import (
    FULL_PRESET,
    PRESETS,
    Preset,
    count_plan,
    fapft_label,
    selector_k,
)
from pft.reproduce.report import write_report
from pft.reproduce.results import (
    Record,
    load_criteria,
    load_records,
    load_soups,
)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (for the report)."""
    path, cwd = Path(path).resolve(), Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def machine() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, {dev}; load average at report time {load}"
    )


def backbone_note(preset: Preset) -> str:
    """Where the backbone came from (the built-in one's ``model.json``), for the report."""
    from pft.model_catalog import get_spec
    from pft.model_factory import builtin_weights

    spec = get_spec(preset.model)
    if spec.source != "builtin":
        return f"`{preset.model}`: {spec.description}."
    info_path = builtin_weights(spec.name).parent / "model.json"
    if not info_path.is_file():
        return f"`{preset.model}`: no model.json beside the weights."
    info = json.loads(info_path.read_text())
    epochs = len(info.get("epochs", []))
    subset = info.get("subset")
    images = f"the first {subset:,} training images" if subset else "all training images"
    return (
        f"`{preset.model}` pre-trained by `pft pretrain` on `{info.get('dataset')}` "
        f"({epochs} epochs, {images}, {info.get('seconds', 0) / 60:.0f} min): test accuracy "
        f"{100 * info.get('test_acc', float('nan')):.1f}% on its {info.get('classes')} "
        f"classes; weights in `{shown(info_path.parent)}`."
    )


def check_backbone(preset: Preset) -> None:
    """Fails before anything is written when the built-in backbone is not pre-trained yet."""
    from pft.model_catalog import get_spec
    from pft.model_factory import builtin_weights

    spec = get_spec(preset.model)
    path = builtin_weights(spec.name)
    if spec.source == "builtin" and not path.is_file():
        raise PftError(
            f"the study needs the built-in backbone {spec.name!r}, which is not "
            f"pre-trained yet: run `pft pretrain` first (expected {path})"
        )


def random_init(preset: Preset) -> bool:
    """Whether the preset's backbone is a random-init model (nothing pre-trained to tune)."""
    from pft.model_catalog import get_spec

    return get_spec(preset.model).source == "random"


def test_sizes(preset: Preset) -> dict[str, int]:
    """Test images per target (the floors of the noise estimates); empty when unreadable."""
    try:
        return {d: s.test for d, s in dataset_sizes(preset).items()}
    except Exception:  # a target dataset missing on this machine: no floors
        return {}


def analyse(root: Path, preset: Preset) -> list[DatasetAnalysis]:
    sizes = test_sizes(preset)
    return [
        analyse_dataset(
            t.dataset,
            load_records(root, t.dataset),
            load_soups(root, t.dataset),
            preset.ks,
            margin=preset.margin,
            chance_margin=preset.chance_margin,
            random_init=random_init(preset),
            test_images=sizes.get(t.dataset),
            criteria=load_criteria(root, t.dataset),
            selector=(selector_k(preset), fapft_label(preset, t)),
        )
        for t in preset.targets
        if load_records(root, t.dataset)
    ]


def _preamble(preset: Preset) -> str:
    if preset.name == FULL_PRESET:
        return "**Preset:** `full`, the study as specified in the issue."
    full = PRESETS[FULL_PRESET]
    targets = ", ".join(
        f"`{t.dataset}` ({t.epochs} epochs"
        + (f", first {t.train_limit} images of each split" if t.train_limit else "")
        + ")"
        for t in full.targets
    )
    return (
        f"**Preset:** these numbers come from the `{preset.name}` preset ({preset.description};"
        f" {count_plan(preset).runs} runs). It is smaller than the study the issue asks for. "
        f"The `full` preset (`pft reproduce --preset full`, {count_plan(full).runs} runs) "
        f"adds: targets {targets}; {full.seeds} seeds; K in {', '.join(map(str, full.ks))}; "
        f"learning-rate grids {json.dumps({k: list(v) for k, v in full.lr_grid.items()})}; "
        f"shift sets {', '.join(full.shifts)}; cheap angles from "
        f"{int(full.cheap_fraction * 100)}% of the epochs; grids that widen up to {full.widen} "
        "steps past an edge (the run count is before widening). Conclusions below hold for "
        "this budget only."
    )


def _completeness(root: Path, preset: Preset) -> str:
    done, planned = len(load_records(root)), count_plan(preset).runs
    if done >= planned:
        return ""
    return (
        f"\n\n**Incomplete:** {done} of the preset's {planned} runs had finished when this "
        "report was written; sections without runs say so."
    )


def _cost(root: Path, preset: Preset) -> tuple[str, float]:
    records = load_records(root)
    wall = sum(r.wall_seconds or 0.0 for r in records)
    lines = [
        f"The {len(records)} runs of this study took {wall / 60:.1f} minutes of wall time "
        "(training and evaluation; soups excluded)."
    ]
    full = PRESETS[FULL_PRESET]
    if records and full.model == preset.model:
        try:
            sizes = dataset_sizes(full) | dataset_sizes(preset)
        except Exception as exc:  # a target dataset missing on this machine
            lines.append(f"No estimate for the `full` preset: {exc}.")
            return " ".join(lines), wall
        rates = measure_rates(records, sizes)
        est = estimate_seconds(full, sizes, rates)
        per = ", ".join(f"`{d}` {s / 60:.0f} min" for d, s in est.items())
        rate_text = ", ".join(f"{f} {1e3 * r:.1f} ms" for f, r in sorted(rates.train.items()))
        lines.append(
            f"Measured training cost per image ({rate_text}) and evaluation cost "
            f"({1e3 * rates.eval:.2f} ms per image) extrapolate the `full` preset "
            f"({count_plan(full).runs} runs) to {sum(est.values()) / 3600:.1f} hours on this "
            f"machine ({per}). The CPU was shared while these runs were measured, so an idle "
            "2-core machine is faster."
        )
    return " ".join(lines), wall


def elapsed_seconds(root: Path) -> tuple[float, int]:
    """The real time of the `pft reproduce` sessions that ran the study (``elapsed.json``), and
    how many there were."""
    path = Path(root) / "elapsed.json"
    if not path.is_file():
        return 0.0, 0
    sessions = json.loads(path.read_text())["sessions"]
    return sum(float(s["seconds"]) for s in sessions), len(sessions)


def cache_note(records: list[Record]) -> str:
    """How many runs trained on cached frozen-prefix tokens, which, and why the others not."""
    used: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in records:
        info = r.summary.get("prefix_cache") or {}
        if info.get("used"):
            base = r.spec.strategy
            used[base] = used.get(base, 0) + 1
        else:
            why = str(info.get("reason", "not recorded (a run from before prefix caching)"))
            reasons[why] = reasons.get(why, 0) + 1
    n = sum(used.values())
    text = f"{n} of {len(records)} runs trained on cached frozen-prefix tokens"
    if used:
        text += " (" + ", ".join(f"`{s}` {c}" for s, c in sorted(used.items())) + ")"
    if reasons:
        text += "; the others did not: " + "; ".join(
            f"{why} ({c})" for why, c in sorted(reasons.items(), key=lambda kv: -kv[1])
        )
    return text + "."


def _caveats(preset: Preset) -> str:
    from pft.model_catalog import get_spec

    return (
        f"- The backbone is `{preset.model}` ({get_spec(preset.model).description}), not "
        "ViT-B/16 on ImageNet-21K, and the targets are tiny. The paper's numbers are "
        "context, not a target to hit.\n" + CAVEATS
    )


CAVEATS = (
    "- Two or three seeds give wide t intervals (t_{0.975} is 12.7 with 2 seeds, 4.3 with 3): "
    "most comparisons of a small study are inconclusive, and the report says so instead of "
    "calling them equal. The standard deviation of paired differences is floored at one "
    "test image, so seeds that tie exactly do not give a zero-width interval.\n"
    "- The learning rate of each strategy is chosen on the held-out accuracy of a selection "
    "seed that is never reported, so the reported seeds carry no selection bias. The best "
    "`angle_topk` setting and the best manual strategy in claim 2 are picked on the reported "
    "seeds' mean held-out accuracy (never on test).\n"
    "- The Pareto front and the verdicts use test accuracy for reporting only; nothing was "
    "selected on it."
)


def reproduce(
    preset: Preset,
    root: Path,
    *,
    report: Path | None = None,
    figures: Path | None = None,
    run: bool = True,
    device: str | None = None,
    progress: bool = True,
    command: str = "pft reproduce",
    log: Log | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Runs the study (unless ``run`` is false), then writes figures and the report.

    Returns ``{"report", "figures", "analyses"}``.
    """
    root = Path(root)
    if run:
        check_backbone(preset)
        run_study(preset, root, device=device, progress=progress, log=log, workers=workers)
    report = Path(report) if report else root / "REPRODUCTION.md"
    figures = Path(figures) if figures else report.parent / "img" / "reproduction"
    from pft.reproduce.figures import write_figures  # matplotlib: only to draw

    analyses = analyse(root, preset)
    figs = {a.dataset: write_figures(a, figures) for a in analyses}
    cost, wall = _cost(root, preset)
    elapsed, sessions = elapsed_seconds(root)
    meta = {
        "command": command,
        "study_dir": shown(root),
        "machine": machine(),
        "wall_minutes": wall / 60,
        "elapsed_minutes": elapsed / 60,
        "sessions": sessions,
        "cache": cache_note(load_records(root)),
        "backbone": backbone_note(preset),
        "preamble": _preamble(preset) + _completeness(root, preset),
        "cost": cost,
        "caveats": _caveats(preset),
    }
    write_report(report, preset, analyses, figs, meta)
    return {"report": report, "figures": figs, "analyses": analyses}

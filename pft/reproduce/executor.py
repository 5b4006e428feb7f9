"""Runs the reproduction study, phase by phase, resumably (see `pft.reproduce.plan`).

Every run lives in its own folder; a folder with a finished ``metrics.json`` is skipped, and a
run interrupted mid-way resumes from the engine's epoch checkpoint. Learning rates are chosen on
the held-out split; test accuracy is only read by the analysis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pft.checkpoint import write_json
from pft.reproduce.plan import (
    FULL,
    STUDY_SOUPS,
    Preset,
    RunSpec,
    Target,
    angle_grid_runs,
    angle_seed_runs,
    cheap_runs,
    count_plan,
    grid_runs,
    seed_runs,
    to_spec,
)
from pft.reproduce.results import (
    Record,
    choose_lrs,
    load_record,
    main_records,
    mean_angles,
    run_dir,
    soup_path,
    widen,
)
from pft.reproduce.souping import soup_runs

Log = Callable[[str], None]


class Study:
    """One study folder: runs the preset's phases and records what it chose.

    The learning rate is chosen on an unreported seed, grids widen until the chosen rate is
    inside them, and soups have matched ingredient counts.

    Learning rates: every grid run uses `plan.SELECTION_SEED`; the reported seeds 0.. run at
    the rate chosen on its held-out accuracy. Soups: each strategy's soup has the reported
    seeds' runs as ingredients (``seeds`` of them, whatever the strategy), so partial and full
    soups are compared at the same ingredient count.
    """

    def __init__(
        self,
        preset: Preset,
        root: Path,
        *,
        device: str | None = None,
        progress: bool = True,
        log: Log | None = None,
    ):
        self.preset, self.root, self.device = preset, Path(root), device
        self.log = log or (lambda msg: tqdm.write(msg))
        self.bar = tqdm(
            total=count_plan(preset).runs,
            unit="run",
            disable=not progress,
            desc=f"reproduce ({preset.name})",
        )
        self.state: dict[str, Any] = {"preset": preset.to_dict(), "targets": {}}

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for target in self.preset.targets:
                self.state["targets"][target.dataset] = self._target(target)
                write_json(self.root / "study.json", self.state)
        finally:
            self.bar.close()
        return self.state

    def _runs(
        self, specs: Sequence[RunSpec], angles: dict[str, float] | None = None
    ) -> list[Record]:
        return [self._run(spec, angles) for spec in specs]

    def _run(self, spec: RunSpec, angles: dict[str, float] | None) -> Record:
        from pft.engine import finetune

        folder = run_dir(self.root, spec)
        cfg = to_spec(spec, self.preset, angles)
        record = load_record(folder)
        if record is None or record.summary.get("config") != cfg.to_dict():
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "spec.json", spec.to_dict())
            self.bar.set_postfix_str(f"{spec.dataset} {spec.run_id}")
            start = time.perf_counter()
            finetune(cfg, folder, device=self.device, train_limit=spec.train_limit)
            write_json(folder / "timing.json", {"wall_seconds": time.perf_counter() - start})
            record = load_record(folder)
            assert record is not None  # the engine wrote metrics.json
            self.log(f"{spec.dataset:>16} {spec.run_id:<44} heldout {record.heldout:.3f}")
        self.bar.update(1)
        return record

    def _grid(self, specs: list[RunSpec], angles: dict[str, float] | None = None) -> list[Record]:
        records = self._runs(specs, angles)
        for _ in range(self.preset.widen):
            extra = widen(records)
            if not extra:
                break
            records += self._runs(extra, angles)
        return records

    def _target(self, t: Target) -> dict[str, Any]:
        p = self.preset
        grid = self._grid(grid_runs(p, t))
        chosen = choose_lrs(grid)
        seeds = self._runs(seed_runs(p, t, chosen))
        fulls = [r for r in main_records(seeds, chosen) if r.label == FULL]
        reference = mean_angles(fulls)  # the average ranking of the reported full runs
        angle_grid = self._grid(angle_grid_runs(p, t), reference)
        chosen |= choose_lrs(angle_grid)
        angle_seeds = self._runs(angle_seed_runs(p, t, chosen), reference)
        cheap = self._runs(cheap_runs(p, t, chosen[FULL]))
        records = grid + seeds + angle_grid + angle_seeds
        soups = self._soups(t, main_records(seeds + angle_seeds, chosen), chosen)
        return {
            "chosen_lr": chosen,
            "reference_angles": reference,
            "runs": [r.spec.run_id for r in records + cheap],
            "soups": soups,
        }

    def _soups(self, t: Target, records: list[Record], chosen: dict[str, float]) -> list[str]:
        n = self.preset.seeds
        groups = {s: [r for r in records if r.label == s] for s in self.preset.soup_strategies}
        # The mixed soup alternates its strategies over the seeds: n ingredients too.
        mix = self.preset.mixed_soup
        by = {(r.label, r.spec.seed): r for r in records if r.label in mix}
        mixed = [by.get((mix[i % len(mix)], i)) for i in range(n)]
        if all(mixed) and len({r.label for r in mixed}) > 1:
            groups["mixed " + "+".join(mix)] = mixed
        names = []
        for name, ingredients in groups.items():
            if len(ingredients) < 2:
                continue
            path = soup_path(self.root, t.dataset, name.replace(" ", "_").replace("+", "-"))
            ids = [r.spec.run_id for r in ingredients]
            if path.is_file():
                old = json.loads(path.read_text())
                methods = [m for m in old if m in STUDY_SOUPS]
                if old.get("ingredients") == ids and set(methods) == set(STUDY_SOUPS):
                    names.append(name)
                    continue
            self.bar.set_postfix_str(f"{t.dataset} soup {name}")
            write_json(path, soup_runs(name, ingredients, self.preset.shifts, self.device))
            names.append(name)
        return names


def run_study(
    preset: Preset,
    root: Path,
    *,
    device: str | None = None,
    progress: bool = True,
    log: Log | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) every phase of ``preset`` under ``root``; returns ``study.json``."""
    return Study(preset, root, device=device, progress=progress, log=log).run()

"""Runs the reproduction study, phase by phase, resumably (see `pft.reproduce.plan`).

Every run lives in its own folder; a folder with a finished ``metrics.json`` is skipped, and a
run interrupted mid-way resumes from the engine's epoch checkpoint. A cheap criterion's scores
are kept in a file of their own and reused while their configuration is unchanged. Learning
rates are chosen on the held-out split; test accuracy is only read by the analysis.

With ``workers`` > 1 the runs of a phase that do not depend on each other (a grid, a phase's
seeds) train at once in that many processes of their own (spawned, each with the parent's torch
thread count); each run is deterministic on its own, so the results do not depend on it.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pft.checkpoint import write_json
from pft.errors import PftError
from pft.reproduce.plan import (
    FULL,
    GRADIENT_CRITERIA,
    STUDY_SOUPS,
    TRAINED_CRITERIA,
    Preset,
    RunSpec,
    Target,
    angle_grid_runs,
    angle_seed_runs,
    cheap_runs,
    count_plan,
    criteria_runs,
    fapft_label,
    grid_runs,
    seed_runs,
    to_spec,
)
from pft.reproduce.results import (
    Record,
    choose_lrs,
    criteria_path,
    load_record,
    main_records,
    mean_angles,
    mean_scores,
    run_dir,
    short_angle_scores,
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
        workers: int = 1,
    ):
        if workers < 1:
            raise PftError(f"workers must be an integer >= 1, got {workers}")
        self.preset, self.root, self.device = preset, Path(root), device
        self.workers, self._pool = workers, None
        self.log = log or (lambda msg: tqdm.write(msg))
        self.bar = tqdm(
            total=count_plan(preset).runs,
            unit="run",
            disable=not progress,
            desc=f"reproduce ({preset.name})",
        )
        self.state: dict[str, Any] = {"preset": preset.to_dict(), "targets": {}}
        self._inputs: dict[str, Any] = {}  # dataset -> (data, unit map) for the criteria

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start = time.perf_counter()
        self._session = self._sessions()
        try:
            for target in self.preset.targets:
                self.state["targets"][target.dataset] = self._target(target)
                write_json(self.root / "study.json", self.state)
            self._session[-1]["finished"] = True
        finally:
            self._clock()
            self.bar.close()
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
        return self.state

    def _sessions(self) -> list[dict[str, Any]]:
        """``elapsed.json``'s sessions with this one appended (its seconds grow as it runs)."""
        path = self.root / "elapsed.json"
        old = json.loads(path.read_text())["sessions"] if path.is_file() else []
        started = datetime.now(UTC).isoformat(timespec="seconds")
        return [*old, {"started": started, "seconds": 0.0, "finished": False}]

    def _clock(self) -> None:
        self._session[-1]["seconds"] = time.perf_counter() - self._start
        write_json(self.root / "elapsed.json", {"sessions": self._session})

    def _runs(
        self, specs: Sequence[RunSpec], angles: dict[str, float] | None = None
    ) -> list[Record]:
        """The records of ``specs`` (in their order), training those not finished yet."""
        pending = {i: self._pending(spec, angles) for i, spec in enumerate(specs)}
        todo = [i for i, (_, _, record) in pending.items() if record is None]
        if self.workers > 1 and len(todo) > 1:
            import torch

            if self._pool is None:
                spawn = multiprocessing.get_context("spawn")  # no fork of a torch process
                self._pool = ProcessPoolExecutor(self.workers, mp_context=spawn)
            threads = torch.get_num_threads()
            futures = {
                i: self._pool.submit(
                    _train,
                    pending[i][1].to_dict(),
                    str(pending[i][0]),
                    self.device,
                    specs[i].train_limit,
                    threads,
                )
                for i in todo
            }
            index = {f: i for i, f in futures.items()}
            done = {}
            for f in as_completed(index):  # progress as runs end, whatever their order
                i = index[f]
                done[i] = self._finished(specs[i], pending[i][0], f.result())
        else:
            done = {i: self._train(specs[i], *pending[i][:2]) for i in todo}
        records = []
        for i in range(len(specs)):
            records.append(done.get(i) or pending[i][2])
            if i not in done:
                self.bar.update(1)
        return records

    def _run(self, spec: RunSpec, angles: dict[str, float] | None) -> Record:
        return self._runs([spec], angles)[0]

    def _pending(self, spec: RunSpec, angles: dict[str, float] | None) -> tuple:
        """(folder, engine config, its finished record or None when it must train)."""
        folder = run_dir(self.root, spec)
        cfg = to_spec(spec, self.preset, angles)
        record = load_record(folder)
        if record is not None and record.summary.get("config") == cfg.to_dict():
            return folder, cfg, record
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "spec.json", spec.to_dict())
        return folder, cfg, None

    def _train(self, spec: RunSpec, folder: Path, cfg: Any) -> Record:
        self.bar.set_postfix_str(f"{spec.dataset} {spec.run_id}")
        seconds = _train(cfg.to_dict(), str(folder), self.device, spec.train_limit, None)
        return self._finished(spec, folder, seconds)

    def _finished(self, spec: RunSpec, folder: Path, seconds: float) -> Record:
        write_json(folder / "timing.json", {"wall_seconds": seconds})
        record = load_record(folder)
        assert record is not None  # the engine wrote metrics.json
        self.log(f"{spec.dataset:>16} {spec.run_id:<44} heldout {record.heldout:.3f}")
        self._clock()
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
        selectors = self._criteria(t, cheap)
        lr = chosen[fapft_label(p, t)]
        criteria = [self._run(s, selectors[s.criterion]) for s in criteria_runs(p, t, lr)]
        records = grid + seeds + angle_grid + angle_seeds
        soups = self._soups(t, main_records(seeds + angle_seeds, chosen), chosen)
        return {
            "chosen_lr": chosen,
            "reference_angles": reference,
            "criterion_scores": selectors,
            "runs": [r.spec.run_id for r in records + cheap + criteria],
            "soups": soups,
        }

    def _criteria(self, t: Target, cheap: list[Record]) -> dict[str, dict[str, float]]:
        """criterion -> unit -> its score averaged over the reported seeds: the gradient
        criteria scored here (or read back), ``short_angle`` from the short runs."""
        per_seed = {
            c: {s: self._score(t, c, s) for s in range(self.preset.seeds)}
            for c in GRADIENT_CRITERIA
        }
        for c in TRAINED_CRITERIA:
            per_seed[c] = {r.spec.seed: short_angle_scores(r) for r in cheap}
        return {c: mean_scores(scores) for c, scores in per_seed.items()}

    def _score(self, t: Target, criterion: str, seed: int) -> dict[str, Any]:
        """One gradient criterion's scores on the target's training split, batches drawn by
        ``seed``, at the runs' shared starting point (pre-trained backbone, head seed 0)."""
        p = self.preset
        params = {"batches": p.criteria_batches, "batch_size": p.batch_size}
        config = {
            "model": p.model,
            "dataset": t.dataset,
            "criterion": criterion,
            "seed": seed,
            "params": params,
            "head_seed": 0,
            "train_limit": t.train_limit,
        }
        path = criteria_path(self.root, t.dataset, criterion, seed)
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("config") == config:
                return old["scores"]
        from pft.base_model import build_pretrained
        from pft.criteria.ranking import score_units

        data, unit_map = self._criterion_inputs(t)
        self.bar.set_postfix_str(f"{t.dataset} {criterion} seed {seed}")
        model = build_pretrained(p.model, data.num_classes, head_seed=0)
        scores = score_units(
            criterion, model, unit_map, data, seed=seed, params=params, device=self.device
        ).to_dict()
        write_json(path, {"config": config, "scores": scores})
        self.log(f"{t.dataset:>16} {criterion} seed {seed}: {scores['seconds']:.1f} s")
        return scores

    def _criterion_inputs(self, t: Target) -> Any:
        """The target's splits (the runs' ``train_limit`` applied) and the model's unit map."""
        if t.dataset not in self._inputs:
            from pft.datasets import DatasetSplits, load_dataset
            from pft.model_catalog import get_spec, unit_map_for
            from pft.model_factory import compute_shape_table

            spec = get_spec(self.preset.model)
            data = load_dataset(t.dataset, image_size=int(spec.overrides.get("img_size", 224)))
            if t.train_limit is not None:
                n = t.train_limit
                data = DatasetSplits(
                    data.name,
                    data.classes,
                    *(
                        type(s)(s.images[:n], s.labels[:n])
                        for s in (data.train, data.heldout, data.test)
                    ),
                )
            um = unit_map_for(self.preset.model, data.num_classes, compute=compute_shape_table)
            self._inputs[t.dataset] = (data, um)
        return self._inputs[t.dataset]

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


def _train(
    cfg: dict[str, Any], folder: str, device: str | None, limit: int | None, threads: int | None
) -> float:
    """One run by the engine (in this process, or in a worker process of the study's pool);
    its wall seconds."""
    import torch

    from pft.engine import finetune
    from pft.jobs.specs import FinetuneSpec

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    finetune(FinetuneSpec.from_dict(cfg), Path(folder), device=device, train_limit=limit)
    return time.perf_counter() - start


def run_study(
    preset: Preset,
    root: Path,
    *,
    device: str | None = None,
    progress: bool = True,
    log: Log | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Runs (or resumes) every phase of ``preset`` under ``root`` (``workers`` runs at once);
    returns ``study.json``."""
    study = Study(preset, root, device=device, progress=progress, log=log, workers=workers)
    return study.run()

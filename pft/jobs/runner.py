"""The one entry point that runs any job spec and returns everything it computed.

`run` dispatches on the spec's kind through `RUNNERS`: fine-tuning (`pft.training.train`),
pre-training of the built-in backbone (`pft.pretrain`, then installed into the data folder),
soups (`pft.soups.pipeline.make_soup`) and per-unit scores of a selection criterion
(`pft.criteria.ranking.rank`, as `pft rank`), and calibrations of the cost preview
(`pft.cost.calibrate`). The caller (the worker, a test, a notebook) owns
the run folder and the reporting; nobody re-reads the files a run wrote to learn its results.

Callbacks (all optional): ``on_progress(info)``, ``on_epoch(epoch, metrics, angle_rows)`` and
``should_cancel()``; see `pft.training.train`. A failure a user caused raises `PftError`;
`describe_failure` turns any exception into a message for the job's ``error``. A fine-tuning
summary always holds ``prefix_cache``: whether the run trained on cached frozen-prefix tokens
(``{used, blocks, images, bytes, seconds, storage, ...}``) or why not (``{used, reason}``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from contract.vocab import JobKind
from pft.checkpoint import atomic_write
from pft.errors import PftError
from pft.failures import describe_failure
from pft.jobs.specs import (
    CalibrateSpec,
    FinetuneSpec,
    JobResult,
    JobSpec,
    PretrainSpec,
    RankSpec,
    SoupSpec,
)
from pft.run_state import check_resume_state, completed_epochs

__all__ = ["RUNNERS", "check_resume_state", "completed_epochs", "describe_failure", "run"]

PRETRAIN_WORK = "run"  # inside a pre-training job's folder: the resumable run
PRETRAIN_MODEL = "model"  # inside a pre-training job's folder: the finished backbone
SOUP_FILE = "delta.safetensors"


def run(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Any = None,
    *,
    device: str | None = None,
    inputs: Mapping[int, Path] | None = None,
) -> JobResult:
    """Runs ``spec`` in the folder ``out_dir`` (resuming what a previous attempt left there).

    ``inputs`` maps each soup ingredient's job id to the local path of its verified delta
    checkpoint (the worker downloads it and checks its sha256).
    """
    runner = RUNNERS.get(spec.kind)
    if runner is None:  # pragma: no cover (JOB_SPECS and RUNNERS list the same kinds)
        raise PftError(f"no runner for job kind {spec.kind!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return runner(spec, out_dir, callbacks, device, dict(inputs or {}))


def _finetune(
    spec: FinetuneSpec, out: Path, callbacks: Any, device: str | None, _: dict
) -> JobResult:
    from pft.prefix_cache import not_used
    from pft.training import FILES, train

    check_resume_state(out)
    trained = train(spec, out, device=device, callbacks=callbacks)
    summary = {
        # a run finished before prefix caching existed did not record it
        "prefix_cache": not_used("not recorded by the run"),
        **trained.summary,
        "resumed_from_epoch": trained.resumed_from_epoch,
        "resumed_from_step": trained.resumed_from_step,
    }
    return JobResult(
        summary=summary,
        epochs=list(trained.summary.get("epochs", [])),
        angles=trained.angles,
        trajectory=trained.trajectory,
        artifacts=dict(FILES),
    )


def _pretrain(
    spec: PretrainSpec, out: Path, callbacks: Any, device: str | None, _: dict
) -> JobResult:
    """Pre-trains into the job folder, then installs the backbone into the data folder."""
    from pft.model_catalog import BUILTIN_BACKBONE
    from pft.model_factory import builtin_weights_path
    from pft.pretrain import pretrain

    check_resume_state(out / PRETRAIN_WORK)
    info = pretrain(
        out / PRETRAIN_MODEL,
        callbacks,
        epochs=spec.epochs,
        subset=spec.subset,
        work_dir=out / PRETRAIN_WORK,
        device=device,
    )
    target = builtin_weights_path(BUILTIN_BACKBONE)
    for name in ("model.safetensors", "model.json"):
        src = out / PRETRAIN_MODEL / name
        atomic_write(target.parent / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    return JobResult(
        summary={**info, "installed": str(target)},
        epochs=list(info.get("epochs", [])),
        artifacts={
            "backbone": f"{PRETRAIN_MODEL}/model.safetensors",
            "metrics": f"{PRETRAIN_MODEL}/model.json",
        },
    )


def _soup(spec: SoupSpec, out: Path, callbacks: Any, device: str | None, inputs: dict) -> JobResult:
    from pft.soups.pipeline import make_soup

    paths = {int(k): Path(v) for k, v in inputs.items()}
    ids = [int(i) for i in spec.ingredients]
    missing = [i for i in ids if i not in paths]
    if missing:
        raise PftError(f"soup ingredient job {missing[0]} has no delta checkpoint to read")
    result = make_soup(
        spec.method,
        [paths[i] for i in ids],
        params=spec.params,
        shifts=list(spec.shifts),
        out=out / SOUP_FILE,
        device=device,
        callbacks=callbacks,
        labels=ids,
    )
    trace = [t | {"job_id": ids[t["ingredient"]]} for t in result["trace"]]
    summary = result | {"selected": [ids[i] for i in result["selected"]], "trace": trace}
    return JobResult(
        summary=summary,
        artifacts={"soup": SOUP_FILE},
        soup={
            "trace": trace,
            "score_in": result["test_acc"],
            "scores_out": {name: m["acc"] for name, m in result["shifts"].items()},
            "mixing": result["mixing"],  # per-unit weights, `contract.api.SoupOutcome.mixing`
        },
    )


RANK_FILE = "scores.json"  # a rank job's scores, as `pft rank --json` prints them


class _RankProgress:
    """A criterion's ``progress(done, total)`` as the job callbacks' ``on_progress``; it also
    asks ``should_cancel`` (the engine's `Cancelled` stops the criterion between batches)."""

    def __init__(self, callbacks: Any) -> None:
        self.callbacks = callbacks

    def __call__(self, done: int, total: int) -> None:
        from pft.training import Cancelled

        should_cancel = getattr(self.callbacks, "should_cancel", None)
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled after {done} of {total} steps")
        on_progress = getattr(self.callbacks, "on_progress", None)
        if on_progress is not None:
            on_progress({"step": done, "total_steps": total, "progress": done / max(total, 1)})


def _rank(spec: RankSpec, out: Path, callbacks: Any, device: str | None, _: dict) -> JobResult:
    """`pft rank` as a job: the same `pft.criteria.ranking.rank` call, its scores the summary."""
    from pft.criteria.ranking import rank, resolve_device

    scores = rank(
        spec.model,
        spec.dataset,
        spec.criterion,
        seed=spec.seed,
        params=spec.params,
        pretrained=spec.pretrained,
        overrides=spec.model_overrides,
        device=device,
        progress=_RankProgress(callbacks),
    )
    data = scores.to_dict()
    atomic_write(out / RANK_FILE, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))
    summary = data | {
        "params": dict(spec.params),
        "seed": spec.seed,
        "device": str(resolve_device(device)),
    }
    return JobResult(summary=summary, artifacts={"scores": RANK_FILE})


def _calibrate(
    spec: CalibrateSpec, out: Path, callbacks: Any, device: str | None, _: dict
) -> JobResult:
    """`pft.cost.calibrate` as a job: the summary is the calibration, and the split sizes of
    the dataset whose images it used (``GET /cost`` predicts from both)."""
    from pft.cost.calibrate import calibrate
    from pft.datasets import load_dataset
    from pft.model_catalog import get_spec

    images, num_classes, sizes = None, 10, None
    if spec.dataset is not None:
        size = int(get_spec(spec.model, spec.model_overrides).overrides.get("img_size", 224))
        data = load_dataset(spec.dataset, image_size=size)
        images, num_classes = data.train.images, data.num_classes
        sizes = {"name": spec.dataset, "num_classes": num_classes}
        sizes |= {n: len(data.split(n)) for n in ("train", "heldout", "test")}
    cal = calibrate(
        spec.model,
        overrides=spec.model_overrides or None,
        pretrained=spec.pretrained,
        batch_size=spec.batch_size,
        steps=spec.steps,
        device=device,
        images=images,
        num_classes=num_classes,
    )
    return JobResult(summary={"calibration": cal, "dataset": sizes})


RUNNERS: dict[JobKind, Callable[[Any, Path, Any, str | None, dict], JobResult]] = {
    JobKind.FINETUNE: _finetune,
    JobKind.PRETRAIN: _pretrain,
    JobKind.SOUP: _soup,
    JobKind.RANK: _rank,
    JobKind.CALIBRATE: _calibrate,
}

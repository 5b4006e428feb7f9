"""The one entry point that runs any job spec and returns everything it computed.

`run` dispatches on the spec's kind through `RUNNERS`: fine-tuning (`pft.training.train`),
pre-training of the built-in backbone (`pft.pretrain`, then installed into the data folder)
and soups (`pft.soups.pipeline.make_soup`). The caller (the worker, a test, a notebook) owns
the run folder and the reporting; nobody re-reads the files a run wrote to learn its results.

Callbacks (all optional): ``on_progress(info)``, ``on_epoch(epoch, metrics, angle_rows)`` and
``should_cancel()``; see `pft.training.train`. A failure a user caused raises `PftError`;
`describe_failure` turns any exception into a message for the job's ``error``. A fine-tuning
summary always holds ``prefix_cache``: whether the run trained on cached frozen-prefix tokens
(``{used, blocks, images, bytes, seconds, storage, ...}``) or why not (``{used, reason}``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from contract.vocab import JobKind
from pft.checkpoint import atomic_write
from pft.errors import PftError
from pft.failures import describe_failure
from pft.jobs.specs import FinetuneSpec, JobResult, JobSpec, PretrainSpec, SoupSpec
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
        },
    )


RUNNERS: dict[JobKind, Callable[[Any, Path, Any, str | None, dict], JobResult]] = {
    JobKind.FINETUNE: _finetune,
    JobKind.PRETRAIN: _pretrain,
    JobKind.SOUP: _soup,
}

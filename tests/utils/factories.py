"""Job factories for backend tests: every job is submitted through `backend.submit` (the API's
own path, spec and all) and run through `backend.claims` (what the worker routes call).

``finished_finetune`` walks a job through the real lifecycle (claim, one report per epoch with
metrics and angle rows, one finish with the final angles) instead of writing rows directly.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.orm import Session

from backend import claims
from backend.core.config import ApiSettings
from backend.crud import DELTA_ARTIFACT
from backend.db.models import Job
from backend.schemas import DEFAULT_STRATEGY, FinetuneCreate
from backend.submit import submit_finetune
from contract.api import AngleRow, ArtifactReport, EpochRecord, FinishReport
from contract.vocab import AngleScope, JobStatus
from pft.model_catalog import TEST_MODEL, unit_map_for

DATASET = "synthetic"  # 4 classes
WORKER = "factory"


def finetune_request(
    *,
    model: str = TEST_MODEL,
    dataset: str = DATASET,
    strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    head_seed: int = 0,
    epochs: int = 2,
    **params: Any,
) -> FinetuneCreate:
    return FinetuneCreate.model_validate(
        {
            "model": model,
            "dataset": dataset,
            "strategy": {"name": strategy, **params},
            "hparams": {"epochs": epochs, "seed": seed, "head_seed": head_seed},
        }
    )


def queued_finetune(
    session: Session,
    *,
    experiment_id: int | None = None,
    settings: ApiSettings | None = None,
    **kw: Any,
) -> Job:
    """A fine-tuning job as ``POST /jobs`` queues it."""
    job = submit_finetune(session, finetune_request(**kw), settings=settings or ApiSettings())
    if experiment_id is not None:
        job.experiment_id = experiment_id
        session.commit()
    return job


def claimed(session: Session, job: Job, worker: str = WORKER) -> str:
    """Claims ``job`` as a worker would; returns the claim token."""
    got = claims.claim_job(session, job_id=job.id, worker=worker, stale_after_s=3600)
    assert got is not None and got.claim is not None
    return got.claim


def unit_angles(model: str = TEST_MODEL) -> dict[str, float]:
    """Distinct angles per unit: later blocks move more (ATTN.i: 10+i, FFN.i: 20+i degrees)."""
    um = unit_map_for(model, 4)
    return {u.name: (10.0 if u.kind == "ATTN" else 20.0) + u.block for u in um.units}


def unit_rows(angles: dict[str, float], model: str = TEST_MODEL) -> list[AngleRow]:
    """Angle rows of units, as the engine reports them."""
    um = unit_map_for(model, 4)
    return [
        AngleRow(
            scope=AngleScope.UNIT,
            name=name,
            angle_deg=deg,
            rel_change=deg / 1000,
            unit=name,
            group=um.unit(name).group,
            block=um.unit(name).block,
        )
        for name, deg in angles.items()
    ]


def tensor_row(name: str, deg: float, unit: str | None = None) -> AngleRow:
    return AngleRow(scope=AngleScope.TENSOR, name=name, angle_deg=deg, unit=unit, part="qkv")


def epoch_record(
    epoch: int, test_acc: float, angles: dict[str, float] | None = None
) -> EpochRecord:
    metrics = {
        "train_loss": 1.0 / epoch,
        "heldout_acc": test_acc - 0.01,
        "test_acc": test_acc,
        "images_per_sec": 1000.0,
    }
    return EpochRecord(epoch=epoch, metrics=metrics, angles=unit_rows(angles or {}))


def finished_finetune(
    session: Session,
    *,
    status: JobStatus = JobStatus.SUCCEEDED,
    test_acc: float = 0.8,
    angles: dict[str, float] | None = None,
    result: dict[str, Any] | None = None,
    **kw: Any,
) -> Job:
    """A fine-tuning job run to ``status``: two epochs of metrics, then the final angles and
    its delta checkpoint (a made-up location and hash: no file is written)."""
    job = queued_finetune(session, **kw)
    claim = claimed(session, job)
    units = angles if angles is not None else unit_angles(kw.get("model", TEST_MODEL))
    for epoch, acc in ((1, test_acc / 2), (2, test_acc)):
        assert claims.record_epoch(
            session, job_id=job.id, claim=claim, record=epoch_record(epoch, acc)
        )
    delta = ArtifactReport(
        kind=DELTA_ARTIFACT,
        location=f"jobs/{job.id}/delta.safetensors",
        size_bytes=1000 + job.id,
        sha256=hashlib.sha256(str(job.id).encode()).hexdigest(),
    )
    report = FinishReport(
        claim=claim, status=status, result=result, angles=unit_rows(units), artifacts=[delta]
    )
    assert claims.finish_job(session, job_id=job.id, claim=claim, report=report)
    session.refresh(job)
    return job

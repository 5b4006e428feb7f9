"""Factories for backend tests: rows built through `backend.crud`, the way the worker writes.

`finished_finetune` walks a job through the real lifecycle (claim, epochs, angles, finish)
instead of writing rows directly, so the factories exercise the worker-facing helpers too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from backend import crud
from backend.db.models import Job
from pft.model_catalog import TEST_MODEL, unit_map_for

DATASET = "synthetic"  # 4 classes


def finetune_config(
    *,
    model: str = TEST_MODEL,
    dataset: str = DATASET,
    strategy: str = "full",
    seed: int = 0,
    **params: Any,
) -> dict[str, Any]:
    return {
        "model": model,
        "model_overrides": {},
        "pretrained": True,
        "dataset": dataset,
        "strategy": {"name": strategy, **params},
        "hparams": {"epochs": 2, "seed": seed},
        "shifts": [],
    }


def queued_finetune(session: Session, **kw: Any) -> Job:
    config = finetune_config(**kw)
    job = crud.create_job(
        session,
        kind="finetune",
        config=config,
        model=config["model"],
        dataset=config["dataset"],
        strategy=config["strategy"]["name"],
        seed=config["hparams"]["seed"],
        experiment_id=kw.get("experiment_id"),
    )
    session.commit()
    return job


def unit_angles(model: str = TEST_MODEL) -> dict[str, float]:
    """Distinct angles per unit: later blocks move more (ATTN.i: 10+i, FFN.i: 20+i degrees)."""
    um = unit_map_for(model, 4)
    return {u.name: (10.0 if u.kind == "ATTN" else 20.0) + u.block for u in um.units}


def finished_finetune(
    session: Session,
    *,
    status: str = "succeeded",
    test_acc: float = 0.8,
    angles: dict[str, float] | None = None,
    experiment_id: int | None = None,
    **kw: Any,
) -> Job:
    """A fine-tuning job run to ``status`` with two epochs of metrics and final angles."""
    job = queued_finetune(session, **kw)
    if experiment_id is not None:
        job.experiment_id = experiment_id
        session.commit()
    assert crud.claim_job(session, job_id=job.id, worker="factory") is not None
    for epoch in (1, 2):
        metrics = {
            "train_loss": 1.0 / epoch,
            "heldout_acc": test_acc - 0.01,
            "test_acc": test_acc if epoch == 2 else test_acc / 2,
            "images_per_sec": 1000.0,
        }
        crud.record_epoch(session, job_id=job.id, epoch=epoch, metrics=metrics)
    units = angles if angles is not None else unit_angles(kw.get("model", TEST_MODEL))
    crud.record_angles(session, job_id=job.id, angles={"units": units, "tensors": {}})
    assert crud.finish_job(session, job_id=job.id, worker="factory", status=status)
    session.refresh(job)
    return job

"""`dashboard.progress`: a job's status, epoch and time left in words (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contract.api import JobPublic
from dashboard.progress import (
    EMPTY,
    cell,
    duration_text,
    epoch_text,
    eta_seconds,
    prefix_cache_text,
    status_text,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def make_job(status: str = "running", *, epochs: int | None = 4, started_s: float = 600, **kw):
    base = {
        "id": 1,
        "kind": "finetune",
        "status": status,
        "experiment_id": None,
        "model": "m",
        "dataset": "d",
        "strategy": "s",
        "seed": 0,
        "config": {"hparams": {"epochs": epochs}},
        "tuned_params": None,
        "total_params": None,
        "progress": 0.0,
        "progress_info": {},
        "result": None,
        "error": None,
        "worker": None,
        "attempts": 1,
        "cancel_requested": False,
        "created_at": NOW - timedelta(hours=1),
        "started_at": NOW - timedelta(seconds=started_s),
        "heartbeat_at": None,
        "finished_at": None,
    }
    return JobPublic.model_validate(base | kw)


def test_eta_from_the_time_per_epoch_so_far():
    job = make_job(progress=0.6, progress_info={"epoch": 3, "epochs_done": 2, "progress": 0.6})
    assert eta_seconds(job, NOW) == pytest.approx(600)  # 300 s per epoch, 2 epochs left
    assert epoch_text(job) == "epoch 3 of 4"


def test_eta_before_the_first_epoch_ends_uses_the_steps_done():
    job = make_job(progress=0.1, progress_info={"epoch": 1, "progress": 0.1})
    assert eta_seconds(job, NOW) == pytest.approx(5400)
    assert epoch_text(job) == "epoch 1 of 4"


def test_naive_start_times_are_utc():
    job = make_job(progress_info={"epochs_done": 1})
    naive = job.model_copy(update={"started_at": job.started_at.replace(tzinfo=None)})
    assert eta_seconds(naive, NOW) == pytest.approx(1800)


@pytest.mark.parametrize(
    "job",
    [
        make_job(),  # claimed, nothing reported yet
        make_job("queued", started_s=0, started_at=None),
        make_job("succeeded", progress=1.0),
        make_job("failed", progress_info={"epochs_done": 1}),
    ],
)
def test_no_eta_without_anything_to_extrapolate(job):
    assert eta_seconds(job, NOW) is None
    assert duration_text(eta_seconds(job, NOW)) == EMPTY


def test_epochs_of_finished_and_unconfigured_jobs():
    assert epoch_text(make_job("succeeded")) == "4 of 4"
    assert epoch_text(make_job("failed", progress_info={"epochs_done": 1})) == "1 of 4"
    assert epoch_text(make_job("queued")) == ""
    pretrain = make_job(config={"epochs": None}, progress_info={"epoch": 2})
    assert epoch_text(pretrain) == "epoch 2"


def test_status_says_a_pending_cancellation():
    assert status_text(make_job(cancel_requested=True)) == "running · cancelling"
    assert status_text(make_job("cancelled", cancel_requested=True)) == "cancelled"
    assert status_text(make_job()) == "running"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59.4, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h 00 min"),
        (7500, "2 h 05 min"),
        (90000, "1 d 1 h"),
    ],
)
def test_durations(seconds, text):
    assert duration_text(seconds) == text


def test_cells():
    assert cell(None) == EMPTY and cell("") == EMPTY and cell(0) == 0 and cell("x") == "x"


def test_prefix_cache_text_says_whether_the_prefix_was_cached() -> None:
    used = {
        "used": True,
        "blocks": 6,
        "images": 1200,
        "bytes": 3 * 2**20,
        "seconds": 1.25,
        "storage": "memory",
    }
    assert prefix_cache_text({"prefix_cache": used}) == (
        "cached below block 6: 1,200 images, 3.0 MB in memory, built in 1.2 s"
    )
    refused = {"used": False, "reason": "augmentation on"}
    assert prefix_cache_text({"prefix_cache": refused}) == "not cached: augmentation on"
    assert prefix_cache_text({"test_acc": 0.5}) is None and prefix_cache_text(None) is None

"""A real `celery worker` runs a ``rank`` job (submitted through ``POST /jobs``) to success: the
job's result is the criterion's scores, the same numbers `pft.criteria.ranking.rank` computes
for the spec, and its scores file is stored as an artifact."""

from __future__ import annotations

import json

import pytest
import torch

from contract.api import RankScores
from contract.vocab import JobStatus
from pft.criteria.ranking import rank
from pft.store import sha256_file
from tests.worker.conftest import FINAL, TINY, Lab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_worker_runs_a_rank_job(lab: Lab, monkeypatch):
    lab.start_worker()
    body = {**TINY, "kind": "rank", "criterion": "gradient_norm", "batches": 2, "seed": 5}
    job_id = lab.submit(body)
    job = lab.wait_status(job_id, FINAL, 120)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.progress == 1.0 and job.attempts == 1
    scores = RankScores.model_validate(job.result)
    assert (scores.criterion, scores.seed, scores.device) == ("gradient_norm", 5, "cpu")
    assert scores.params == job.config["params"] == {"batches": 2, "batch_size": 32}

    monkeypatch.setenv("PFT_DATA_DIR", str(lab.data))
    torch.set_num_threads(1)
    expected = rank(
        TINY["model"],
        TINY["dataset"],
        "gradient_norm",
        seed=5,
        params={"batches": 2},
        pretrained=TINY["pretrained"],
        device="cpu",
    )
    assert [u.name for u in scores.units] == [u.name for u in expected.units]
    assert [u.score for u in scores.units] == pytest.approx(
        [u.score for u in expected.units], rel=1e-9
    )
    artifacts = lab.artifacts(job_id)
    assert set(artifacts) == {"scores"}
    path = lab.file(artifacts["scores"])
    assert sha256_file(path) == artifacts["scores"].sha256
    assert json.loads(path.read_text())["units"] == job.result["units"]

"""A request's database session ends with its route, before the response and background tasks.

The submit routes enqueue their jobs in a background task, which waits for a worker thread. A
session still open then holds its pooled connection, and a burst of submits (100 at once in
`tests/reliability/test_load.py`) starved the pool: routes waited 30 s for a connection and
answered 500. Here the enqueue step records how many connections are checked out when it runs.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from backend.api.routes import experiments, jobs
from backend.core.config import ApiSettings
from backend.db.session import get_engine
from pft.model_catalog import TEST_MODEL

FT = {"kind": "finetune", "model": TEST_MODEL, "dataset": "synthetic"}
EXPERIMENT = {
    "model": TEST_MODEL,
    "dataset": "synthetic",
    "strategies": [{"name": "full"}],
    "seeds": [0],
    "hparams": {"epochs": 1},
}


@pytest.mark.parametrize(
    ("module", "path", "body"),
    [(experiments, "/api/v1/experiments", EXPERIMENT), (jobs, "/api/v1/jobs", FT)],
    ids=["experiments", "jobs"],
)
def test_no_connection_is_held_while_jobs_are_enqueued(
    client: TestClient,
    settings: ApiSettings,
    monkeypatch: pytest.MonkeyPatch,
    module,  # noqa: ANN001
    path: str,
    body: dict,
) -> None:
    pool = get_engine(settings.db_url).pool
    seen: list[int] = []
    real = module.enqueue_jobs

    def recording(job_ids, *, settings):  # noqa: ANN001
        seen.append(pool.checkedout())
        return real(job_ids, settings=settings)

    monkeypatch.setattr(module, "enqueue_jobs", recording)
    r = client.post(path, json=body)
    assert r.status_code == 201, r.text
    assert seen == [0]

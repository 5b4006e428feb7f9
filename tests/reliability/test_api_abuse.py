"""Bad input and access: fuzzing with and without the token, path traversal, oversized bodies.

schemathesis runs in-process against the real app (SQLite, the real Redis on database 12 with a
queue of its own) to stay within budget, with each of the two tokens (users', workers') and
without; the oversized requests go to a real uvicorn.
Path traversal is refused here in the backend and again in the worker (`test_bad_jobs`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr

from backend.core.config import ApiSettings
from backend.main import create_app
from contract.vocab import API_PREFIX, WORKER_ROUTES
from pft.errors import PftError
from pft.store import ArtifactStore
from tests.reliability.conftest import REDIS_URL, drop_queue_keys
from tests.worker.conftest import Lab

TOKEN = "abuse-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORKER_TOKEN = "abuse-worker-token-9876543210"
WORKER_AUTH = {"Authorization": f"Bearer {WORKER_TOKEN}"}
MAX_EXAMPLES = 20
JOB = {"model": "pft/vit-micro", "dataset": "synthetic", "pretrained": False}


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    data = tmp_path / "data"
    monkeypatch.setenv("PFT_DATA_DIR", str(data))  # the datasets root the validators use
    queue = f"pft-abuse-{uuid.uuid4().hex[:8]}"
    app = create_app(
        ApiSettings(
            data_dir=data,
            broker_url=REDIS_URL,
            queue=queue,
            api_token=SecretStr(TOKEN),
            worker_token=SecretStr(WORKER_TOKEN),
            reconcile_interval_s=0,
            enqueue_grace_s=0,
        )
    )
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        drop_queue_keys(queue, REDIS_URL)


def _cases(operation, check) -> int:  # noqa: ANN001
    """Runs ``check(operation, case)`` on up to MAX_EXAMPLES cases; the number run."""
    calls = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        check(operation, case)

    run()
    return calls


def _fuzz(client: TestClient, check) -> tuple[int, int, list[str]]:  # noqa: ANN001
    """Runs ``check(operation, case)`` on generated cases of every operation."""
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", client.app)
    failures: list[str] = []
    operations = calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        try:
            calls += _cases(operation, check)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    return operations, calls, failures


@pytest.mark.slow
@pytest.mark.timeout(240)
def _worker_route(op) -> bool:  # noqa: ANN001
    return op.path.startswith(API_PREFIX + WORKER_ROUTES)


def test_fuzzing_the_whole_api_with_and_without_the_token(app_client: TestClient):
    started = time.perf_counter()

    def with_token(op, case: schemathesis.Case) -> None:  # noqa: ANN001
        response = case.call(headers=WORKER_AUTH if _worker_route(op) else AUTH)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        assert "Traceback" not in response.text

    def without_token(op, case: schemathesis.Case) -> None:  # noqa: ANN001
        # no token, a wrong one, one without "Bearer", and the other area's token: the users'
        # token opens no worker route and the worker token no user route
        other = AUTH if _worker_route(op) else WORKER_AUTH
        wrong = ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}, other)
        for headers in wrong:
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            if op.path == "/api/v1/health":
                assert response.status_code == 200
            else:
                assert response.status_code == 401, (case.formatted_path, response.text)
                assert "Bearer" in str(response.headers.get("www-authenticate"))

    ops, calls_in, failures = _fuzz(app_client, with_token)
    assert ops >= 18 and not failures, "\n\n".join(failures)
    ops, calls_out, failures = _fuzz(app_client, without_token)
    assert not failures, "\n\n".join(failures)
    print(
        f"schemathesis: {ops} operations, {calls_in} calls with the token, {calls_out} cases x 4 "
        f"without a valid one, {time.perf_counter() - started:.1f} s"
    )


def test_a_malformed_body_without_the_token_is_401_not_422(app_client: TestClient):
    r = app_client.post(
        "/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 401, r.text


TRAVERSALS = [
    "../outside",
    "../../../../etc",
    "a/../../outside",
    "/etc",
    "//etc",
    "escape",  # a symlink in the datasets root that points out of it
    "escape/a",
    "ok/../../outside",
]


def test_dataset_names_that_leave_the_datasets_root_are_refused(
    app_client: TestClient, tmp_path: Path
):
    datasets = tmp_path / "data" / "datasets"
    (datasets / "ok" / "a").mkdir(parents=True)
    (tmp_path / "outside" / "a").mkdir(parents=True)
    os.symlink(tmp_path / "outside", datasets / "escape")
    experiment = {**JOB, "strategies": [{"name": "full"}]}
    for name in TRAVERSALS:
        for route, body in (("/api/v1/jobs", JOB), ("/api/v1/experiments", experiment)):
            r = app_client.post(
                route, json={**body, "dataset": f"imagefolder:{name}"}, headers=AUTH
            )
            assert r.status_code == 422, (name, route, r.text)
            msg = r.json()["detail"][0]["msg"]
            assert "outside" in msg and "only paths inside it are accepted" in msg, msg
    assert app_client.get("/api/v1/jobs", headers=AUTH).json()["total"] == 0

    # URL-encoded forms are not decoded anywhere: they name a folder inside the root (which the
    # worker then reports missing, see test_bad_jobs), never a path outside it.
    for name in ("%2e%2e/outside", "..%2foutside", "%2e%2e%2f%2e%2e%2fetc"):
        r = app_client.post(
            "/api/v1/jobs", json={**JOB, "dataset": f"imagefolder:{name}"}, headers=AUTH
        )
        if r.status_code == 201:
            folder = (datasets / name).resolve()
            assert datasets.resolve() in folder.parents and r.json()["dataset"].endswith(name)
        else:
            assert r.status_code == 422, r.text


def test_a_dataset_folder_in_a_symlink_loop_is_a_422_not_a_500(
    app_client: TestClient, tmp_path: Path
):
    datasets = tmp_path / "data" / "datasets"
    datasets.mkdir(parents=True)
    os.symlink(datasets / "loop", datasets / "loop")
    os.symlink(datasets / "ping", datasets / "pong")
    os.symlink(datasets / "pong", datasets / "ping")
    experiment = {**JOB, "strategies": [{"name": "full"}]}
    for name in ("loop", "ping", "loop/a/b"):
        for route, body in (("/api/v1/jobs", JOB), ("/api/v1/experiments", experiment)):
            r = app_client.post(
                route, json={**body, "dataset": f"imagefolder:{name}"}, headers=AUTH
            )
            assert r.status_code == 422, (name, route, r.text)
            assert r.json()["detail"][0]["loc"] == ["body", "dataset"]
    assert app_client.get("/api/v1/jobs", headers=AUTH).json()["total"] == 0


def test_2048_jobs_in_one_request_are_refused_naming_the_fields(app_client: TestClient):
    """The schema's own caps (64 strategies, 32 seeds) multiply to 2,048 jobs: the product is
    capped too (PFT_MAX_JOBS_PER_EXPERIMENT, 256 by default)."""
    strategies = [{"name": "full"}, {"name": "attn_only"}] * 32
    body = {**JOB, "strategies": strategies, "seeds": list(range(32))}
    r = app_client.post("/api/v1/experiments", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "seeds"] and "2048 jobs" in error["msg"], error
    assert "strategies" in error["msg"] and "256" in error["msg"], error
    assert app_client.get("/api/v1/jobs", headers=AUTH).json()["total"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/../../../../etc/passwd/units",
        "/api/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd/units",
        "/api/v1/models/..%2F..%2F..%2Fetc/units",
        "/api/v1/jobs/..%2F..%2Fetc%2Fpasswd/artifacts",
        "/api/v1/jobs/%2e%2e/artifacts",
        "/api/v1/experiments/..%2f1/results.csv",
    ],
)
def test_traversal_in_url_paths_gets_no_file(app_client: TestClient, path: str):
    r = app_client.get(path, headers=AUTH)
    assert r.status_code in (404, 422), (path, r.status_code, r.text)
    assert "root:" not in r.text and "Traceback" not in r.text


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_the_worker_refuses_artifact_locations_outside_the_store(tmp_path: Path, where: str):
    store = ArtifactStore(str(tmp_path / "store"))
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    location = str(secret) if where == "absolute" else f"{store.root}/jobs/1/../../../{secret.name}"
    with pytest.raises((PftError, ValueError)):
        store.fetch(location)


def test_an_unreadable_image_is_a_user_error_naming_the_file(tmp_path, monkeypatch):
    from pft.datasets import load_dataset

    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path))
    for cls in ("a", "b"):
        (tmp_path / "datasets" / "bad" / cls).mkdir(parents=True)
    (tmp_path / "datasets" / "bad" / "a" / "0.png").write_bytes(b"not an image")
    with pytest.raises(PftError, match="0.png"):
        load_dataset("imagefolder:bad", image_size=8)


# ------------------------------------------------------------------------------------------
# oversized requests against a real server


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_oversized_requests_are_refused(lab: Lab):
    body_10k = {**JOB, "strategies": [{"name": "full"}] * 10_000}
    seeds_10k = {**JOB, "strategies": [{"name": "full"}], "seeds": list(range(10_000))}
    ten_mb = json.dumps({**JOB, "name": "x" * 10_000_000}).encode()
    timings: dict[str, float] = {}
    with lab.api.client() as c:

        def timed(label: str, method: str, url: str, **kw) -> int:  # noqa: ANN003
            start = time.perf_counter()
            r = c.request(method, url, **kw)
            timings[label] = time.perf_counter() - start
            assert "Traceback" not in r.text
            return r.status_code

        assert timed("10,000 strategies", "POST", "/experiments", json=body_10k) == 422
        assert timed("10,000 seeds", "POST", "/experiments", json=seeds_10k) == 422
        assert timed("10 MB body", "POST", "/experiments", content=ten_mb) == 413
        chunks = (ten_mb[i : i + 65536] for i in range(0, len(ten_mb), 65536))
        assert timed("10 MB chunked", "POST", "/jobs", content=chunks) == 413
        assert c.get("/jobs").json()["total"] == 0
    print({k: f"{v * 1000:.0f} ms" for k, v in timings.items()})  # a figure, not a limit

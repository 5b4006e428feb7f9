"""Property-based run of schemathesis against the OpenAPI schema: no input yields a 5xx, and
every response matches the documented schema (the worker routes with the worker token).

Capped at a few examples per operation so it fits the 2-core test budget; both databases.
(Driven through `as_strategy` rather than `schemathesis.pytest.from_fixture`, which does not
work with the pytest in this environment.)
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from contract.vocab import API_PREFIX, WORKER_ROUTES

from ..conftest import TOKEN, WORKER_TOKEN

MAX_EXAMPLES = 15
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORKER_AUTH = {"Authorization": f"Bearer {WORKER_TOKEN}"}


@pytest.mark.slow
def test_no_server_errors(client: TestClient) -> None:
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", client.app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            worker = case.formatted_path.startswith(f"{API_PREFIX}{WORKER_ROUTES}/")
            response = case.call(headers=WORKER_AUTH if worker else AUTH)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            # Schema-valid requests may still be 422: catalogue names, reference jobs and soup
            # ingredients are checked against data the schema cannot express.
            case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert operations >= 24
    assert not failures, "\n\n".join(failures)

"""Compose and the dashboard's door (issue 16.4), checked on the parsed files (no Docker engine):
published ports sit on the operator's address, and the dashboard runs behind its door with the
login on."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dashboard.config import DashboardSettings
from tests.deploy.test_compose import BASE, GPU, _argv, _load

PUBLISH = re.compile(r"^\$\{PFT_PUBLISH_ADDRESS:-127\.0\.0\.1\}:\$\{PFT_[A-Z_]+_PORT:-\d+\}:\d+$")


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return _load(BASE)


def test_every_published_port_is_bound_to_the_operators_address(base: dict[str, Any]) -> None:
    published = {
        name: service["ports"]
        for doc in (base, _load(GPU))
        for name, service in doc["services"].items()
        if "ports" in service
    }
    assert set(published) == {"api", "dashboard"}
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and PUBLISH.match(port), f"{name}: {port!r}"


def test_the_dashboard_runs_behind_its_door_with_the_login_on(base: dict[str, Any]) -> None:
    service = base["services"]["dashboard"]
    argv = _argv(service["command"])
    assert argv[:3] == ["streamlit", "run", "dashboard/server.py"]
    env = service["environment"]
    assert env["PFT_DASHBOARD_LOGIN"] == "always"
    bind = next(a.split("=", 1)[1] for a in argv if a.startswith("--server.address="))
    # The settings the container reads give a login, whatever the operator's allowed names.
    settings = DashboardSettings(
        api_token="t", dashboard_login=env["PFT_DASHBOARD_LOGIN"], dashboard_allowed_hosts=""
    )
    assert settings.door_policy(bind).login
    assert env["PFT_DASHBOARD_ALLOWED_HOSTS"] == "${PFT_DASHBOARD_ALLOWED_HOSTS:-}"

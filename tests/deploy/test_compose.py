"""The docker-compose files, checked without a Docker engine (CI has none).

Two layers: the compose-spec JSON schema (``check-jsonschema --builtin-schema
vendor.compose-spec``, offline), and the deployment's invariants: brokers stay private,
everything has a healthcheck, GPUs only in the overlay, workers scale, and every command,
Dockerfile, extra and ``PFT_*`` variable the files name exists in the project.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "compose.gpu.yaml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return _load(BASE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return _load(GPU)


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _walk(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, value) pair of a YAML tree."""
    out = [(path, node)]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, (*path, i))
    return out


# --- schema ---------------------------------------------------------------------------------


def test_both_files_match_the_compose_spec_schema() -> None:
    result = _validate(BASE, GPU)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path, base: dict[str, Any]) -> None:
    # Negative control: the validator really runs and reads our structure.
    broken = dict(base)
    broken["services"] = dict(base["services"])
    broken["services"]["api"] = {
        **base["services"]["api"],
        "depends_on": {"redis": {"condition": "when_ready"}},
    }
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _validate(path)
    assert result.returncode != 0
    assert "when_ready" in result.stdout + result.stderr


# --- invariants -----------------------------------------------------------------------------


def test_the_expected_services_exist(base: dict[str, Any]) -> None:
    assert set(base["services"]) == {"redis", "postgres", "api", "dashboard", "worker"}


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_broker_and_database_are_not_published(base: dict[str, Any], name: str) -> None:
    service = base["services"][name]
    assert "ports" not in service, f"{name} must stay on the internal network"
    assert service.get("network_mode") != "host"


def test_postgres_and_redis_keep_their_data_on_volumes(base: dict[str, Any]) -> None:
    volumes = set(base["volumes"])
    for name in ("redis", "postgres"):
        mounts = [m.split(":")[0] for m in base["services"][name]["volumes"]]
        assert any(m in volumes for m in mounts), f"{name} has no named volume"


def test_every_service_has_a_healthcheck(base: dict[str, Any]) -> None:
    for name, service in base["services"].items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"


def test_dependencies_wait_for_health(base: dict[str, Any]) -> None:
    services = base["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
    assert {"redis", "postgres"} <= set(services["api"]["depends_on"])
    assert set(services["worker"]["depends_on"]) == {"redis", "api"}
    assert "api" in services["dashboard"]["depends_on"]


def test_secrets_are_required_not_defaulted() -> None:
    text = BASE.read_text()
    for var in ("PFT_API_TOKEN", "PFT_WORKER_TOKEN", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses, f"{var} is not used"
        assert all(u.startswith(":?") for u in uses), f"{var} must be ${{{var}:?...}}: {uses}"
    assert "pft:pft@" not in text, "a literal database password"


def test_only_the_api_and_dashboard_hold_the_api_token(base: dict[str, Any]) -> None:
    holders = {
        n for n, s in base["services"].items() if "PFT_API_TOKEN" in s.get("environment", {})
    }
    assert holders == {"api", "dashboard"}


def test_only_the_api_and_the_workers_hold_the_worker_token(base: dict[str, Any]) -> None:
    holders = {
        n for n, s in base["services"].items() if "PFT_WORKER_TOKEN" in s.get("environment", {})
    }
    assert holders == {"api", "worker"}


def test_the_worker_reaches_the_lab_through_the_api_only(
    base: dict[str, Any], gpu: dict[str, Any]
) -> None:
    # The API is the database's only writer: a worker (on a GPU host, say) holds the API's URL
    # and its own token, never the database's address or password.
    for doc in (base, gpu):
        worker = doc["services"]["worker"]
        env = worker.get("environment", {})
        assert "PFT_DATABASE_URL" not in env
        text = yaml.safe_dump(worker)
        assert "POSTGRES_PASSWORD" not in text and "postgres" not in text
    env = base["services"]["worker"]["environment"]
    assert env["PFT_API_URL"] == "http://api:8000"
    assert env["PFT_WORKER_TOKEN"].startswith("${PFT_WORKER_TOKEN:?")
    api = base["services"]["api"]["environment"]
    assert api["PFT_WORKER_TOKEN"] == env["PFT_WORKER_TOKEN"], "the API must check the same token"


def test_gpu_devices_only_in_the_overlay_and_only_for_the_worker(
    base: dict[str, Any], gpu: dict[str, Any]
) -> None:
    assert not [p for p, _ in _walk(base) if "devices" in p], "GPU reservation in the base file"
    assert set(gpu["services"]) == {"worker"}
    devices = gpu["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["services"]["worker"]["environment"]["PFT_DEVICE"] == "cuda"


def test_the_worker_scales(base: dict[str, Any]) -> None:
    worker = base["services"]["worker"]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"worker.{key} prevents --scale worker=N"


def test_workers_and_api_share_the_artifact_store(base: dict[str, Any]) -> None:
    services = base["services"]

    def data_volume(name: str) -> str:
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        return mounts["/data"]

    assert data_volume("api") == data_volume("worker") in base["volumes"]
    assert services["worker"]["environment"]["PFT_ARTIFACT_URL"].startswith(
        "${PFT_ARTIFACT_URL:-/data/"
    )
    assert services["api"]["environment"]["PFT_DATABASE_URL"].startswith("postgresql+psycopg://")
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["PFT_BROKER_URL"] == "redis://:${REDIS_PASSWORD:?set it}@redis:6379/0"


# --- everything named exists in the project --------------------------------------------------


def _pft_command_parses(argv: list[str]) -> None:
    """Parses ``pft <sub> [options]`` with the real typer app (raises on unknown names)."""
    import typer

    from lab.cli import app

    group = typer.main.get_command(app)
    assert argv[0] == "pft"
    sub = group.commands.get(argv[1])
    assert sub is not None, f"`pft {argv[1]}` is not a command; have {sorted(group.commands)}"
    sub.make_context(argv[1], argv[2:])


def _streamlit_command_parses(argv: list[str]) -> None:
    from streamlit.web import cli

    assert argv[:2] == ["streamlit", "run"]
    run = cli.main.commands["run"]
    ctx = run.make_context("run", argv[2:])
    target = ROOT / ctx.params["target"]
    assert target.is_file(), f"{target} does not exist"
    for option in argv[3:]:
        key = option.split("=")[0].lstrip("-")
        assert key in {p.name.replace("_", ".") for p in run.params} | {
            o.lstrip("-") for p in run.params for o in p.opts
        }, f"unknown streamlit option {option}"


def test_redis_requires_its_password(base: dict[str, Any]) -> None:
    redis = base["services"]["redis"]
    assert "--requirepass" in " ".join(_argv(redis["command"]))
    assert "REDIS_PASSWORD" in " ".join(_argv(redis["healthcheck"]["test"]))


@pytest.mark.parametrize("name", ["api", "dashboard", "worker"])
def test_service_commands_exist_in_the_project(base: dict[str, Any], name: str) -> None:
    argv = _argv(base["services"][name]["command"])
    if argv[0] == "pft":
        _pft_command_parses(argv)
    elif argv[0] == "streamlit":
        _streamlit_command_parses(argv)
    else:
        pytest.fail(f"{name}: unexpected command {argv}")


def test_worker_healthcheck_names_the_celery_app(base: dict[str, Any]) -> None:
    import importlib

    test = base["services"]["worker"]["healthcheck"]["test"]
    argv = _argv(test[1] if test[0] == "CMD-SHELL" else test[1:])
    module = argv[argv.index("-A") + 1]
    celery_app = importlib.import_module(module)
    assert hasattr(celery_app, "app") or hasattr(celery_app, "celery")


def test_http_healthchecks_hit_real_routes(base: dict[str, Any]) -> None:
    api_check = " ".join(base["services"]["api"]["healthcheck"]["test"])
    assert "/api/v1/health" in api_check and ":8000" in api_check
    dash_check = " ".join(base["services"]["dashboard"]["healthcheck"]["test"])
    assert "/_stcore/health" in dash_check and ":8501" in dash_check
    routes = "\n".join(p.read_text() for p in (ROOT / "backend").rglob("*.py"))
    assert '"/health"' in routes or "'/health'" in routes, "the backend defines no /health route"


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _resolve_extras(names: list[str]) -> set[str]:
    """Every requirement name the extras pull in, following ``pft-lab[...]`` self-references."""
    extras, out, todo = _extras(), set(), list(names)
    while todo:
        name = todo.pop()
        assert name in extras, f"extra {name!r} is not in pyproject.toml"
        for req in extras[name]:
            m = re.match(r"pft-lab\[([^\]]+)\]", req)
            if m:
                todo += m.group(1).split(",")
            else:
                out.add(re.split(r"[\[<>=;! ]", req, maxsplit=1)[0].lower())
    return out


def _dockerfiles(base: dict[str, Any]) -> dict[str, Path]:
    out = {}
    for name, service in base["services"].items():
        if "build" in service:
            build = service["build"]
            out[name] = ROOT / build["context"] / build["dockerfile"]
    return out


def test_dockerfiles_exist_and_install_existing_extras(base: dict[str, Any]) -> None:
    files = _dockerfiles(base)
    assert set(files) == {"api", "dashboard", "worker"}
    for name, path in files.items():
        assert path.is_file(), f"{name}: {path} does not exist"
        text = path.read_text()
        installs = re.findall(r'pip install "?\.\[([^\]]+)\]', text)
        assert installs, f"{path.name} installs no extras of the project"
        _resolve_extras(installs[0].split(","))
        for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
            for item in src.split():
                assert (ROOT / item).exists(), f"{path.name} copies {item}, which is missing"


def test_api_image_has_no_torch_and_worker_image_has_it(base: dict[str, Any]) -> None:
    files = _dockerfiles(base)

    def packages(path: Path) -> set[str]:
        extras = re.findall(r'pip install "?\.\[([^\]]+)\]', path.read_text())[0]
        return _resolve_extras(extras.split(","))

    assert "torch" not in packages(files["api"])
    assert {"fastapi", "streamlit"} <= packages(files["api"])
    assert {"torch", "timm", "celery", "httpx"} <= packages(files["worker"])
    # A worker is an HTTP client of the API: no database layer, no web server.
    assert not {"sqlalchemy", "alembic", "psycopg", "fastapi"} & packages(files["worker"])


def test_the_worker_image_holds_no_database_layer(base: dict[str, Any]) -> None:
    copied = re.findall(r"^COPY (\S+) ", _dockerfiles(base)["worker"].read_text(), flags=re.M)
    assert {"contract", "pft", "worker", "lab"} <= set(copied)
    assert not {"backend", "dashboard"} & set(copied)
    assert "contract" in re.findall(r"^COPY (\S+) ", _dockerfiles(base)["api"].read_text(), re.M)


def test_api_image_commands_run_without_torch() -> None:
    # The api/dashboard image has no torch: `pft api` and the dashboard's modules must not need
    # it. A fresh interpreter with torch, timm and torchvision made unimportable proves it.
    code = (
        "import sys\n"
        "for m in ('torch', 'timm', 'torchvision'): sys.modules[m] = None\n"
        "import typer, lab.cli\n"
        "group = typer.main.get_command(lab.cli.app)\n"
        "group.commands['api'].make_context('api', ['--host', '0.0.0.0', '--port', '8000'])\n"
        "import backend.main, dashboard.client, dashboard.charts, dashboard.data\n"
        "print('torch-free')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0 and "torch-free" in result.stdout, result.stderr[-2000:]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data"} <= ignored
    for path in _dockerfiles(_load(BASE)).values():
        for src in re.findall(r"^COPY (.+) \S+$", path.read_text(), flags=re.M):
            assert not set(src.split()) & ignored, f"{path.name} copies an ignored path"


def test_pft_variables_are_settings_the_services_read(
    base: dict[str, Any], gpu: dict[str, Any]
) -> None:
    # Each service's PFT_* variables against that service's own settings class: a variable the
    # service ignores is a silent misconfiguration (a worker given the database URL, say).
    from backend.core.config import ApiSettings
    from dashboard.config import DashboardSettings
    from worker.config import WorkerSettings

    readers = {"api": ApiSettings, "worker": WorkerSettings, "dashboard": DashboardSettings}
    for doc in (base, gpu):
        for name, service in doc["services"].items():
            names = [v for v in service.get("environment", {}) if v.startswith("PFT_")]
            if not names:
                continue
            assert name in readers, f"{name} sets {names} but reads no pft settings"
            known = {"PFT_" + field.upper() for field in readers[name].model_fields}
            for var in names:
                assert var in known, f"{name}: {var} is read by no field of its settings"

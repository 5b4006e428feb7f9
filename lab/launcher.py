"""`pft up`: the whole lab on one machine, under one data folder (the embedded mode).

Starts a real Redis (``lab.redis_server``), the API, one worker and the dashboard, each a child
process in its own process group with its log in ``$PFT_DATA_DIR/logs/`` and its pid file in
``$PFT_DATA_DIR/run/``; waits until they are healthy, prints the dashboard URL and the token
file, and queues the built-in backbone's pre-training if it is missing. A service that exits on
its own is restarted (a few times at most). Ctrl-C or SIGTERM stops every process it started
(SIGTERM to each group, SIGKILL after a grace period).

Running it twice is safe: the launcher holds an exclusive lock on ``run/lab.lock`` while it
lives, so a second start sees the lock and says where the lab already is. A launcher that died
without cleaning up (SIGKILL, power loss) leaves stale pid files; the next start takes over:
it stops the processes those files still name (after checking each is the same process, by its
start time) and starts afresh.

Environment: ``PFT_DATA_DIR`` (default ``./data``), ``PFT_API_PORT`` (8000),
``PFT_DASHBOARD_PORT`` (8501), ``PFT_REDIS_PORT`` (default: a free loopback port),
``PFT_LAB_HOST`` (127.0.0.1), ``PFT_AUTO_PRETRAIN`` (1; 0 skips queueing the backbone's
pre-training),
``PFT_STOP_GRACE_S`` (20), ``PFT_START_TIMEOUT_S`` (120).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab.processes import (
    http_ok,
    pid_file_is_live,
    port_free,
    read_pid_file,
    stop_group,
    write_pid_file,
)
from lab.redis_server import RedisProcess, RedisStartError, start_redis
from pft.model_catalog import BUILTIN_BACKBONE
from pft.paths import data_dir as default_data_dir

API_HEALTH_PATH = "/api/v1/health"
DASHBOARD_HEALTH_PATH = "/_stcore/health"
MAX_RESTARTS = 5  # a service that exits this often within RESTART_WINDOW_S stops the lab
RESTART_WINDOW_S = 300.0


class LaunchError(RuntimeError):
    """The lab could not start; the message says why and what to do."""


class StopRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived: unwind and stop the lab."""


@dataclass(frozen=True)
class LabConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    api_port: int = 8000
    dashboard_port: int = 8501
    redis_port: int | None = None  # None: a free port (a system Redis often holds 6379)
    auto_pretrain: bool = True
    stop_grace_s: float = 20.0  # a worker gets this long to checkpoint before SIGKILL
    start_timeout_s: float = 120.0  # per service health wait

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> LabConfig:
        env = dict(os.environ if env is None else env)

        def num(name: str, default: float | None, kind: type = int) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise LaunchError(f"{name}={raw!r} is not a number") from None
            if kind is int and not 1 <= value <= 65535 and name.endswith("_PORT"):
                raise LaunchError(f"{name}={raw!r} is not a port; use 1-65535")
            if not math.isfinite(value) or value < 0:
                raise LaunchError(f"{name}={raw!r} must be a finite, non-negative number")
            return value

        folder = env.get("PFT_DATA_DIR")
        return cls(
            data_dir=Path(folder).expanduser().resolve() if folder else default_data_dir(),
            host=env.get("PFT_LAB_HOST", "127.0.0.1") or "127.0.0.1",
            api_port=num("PFT_API_PORT", 8000),
            dashboard_port=num("PFT_DASHBOARD_PORT", 8501),
            redis_port=num("PFT_REDIS_PORT", None),
            auto_pretrain=env.get("PFT_AUTO_PRETRAIN", "1").strip().lower()
            not in {"0", "false", "no", "off"},
            stop_grace_s=num("PFT_STOP_GRACE_S", 20.0, float),
            start_timeout_s=num("PFT_START_TIMEOUT_S", 120.0, float),
        )

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "api_token"

    @property
    def api_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.dashboard_port}"

    @property
    def backbone_file(self) -> Path:
        # The layout of pft.model_factory.builtin_weights_path, which imports torch (too slow
        # to load here) and reads the data folder from the environment rather than this config.
        return self.data_dir / "models" / BUILTIN_BACKBONE / "model.safetensors"


def _url_host(host: str) -> str:
    # A lab listening on every interface is still reached locally through loopback.
    return "127.0.0.1" if host in {"0.0.0.0", ""} else host


# --- the lab --------------------------------------------------------------------------------


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    argv: list[str]
    env: dict[str, str]
    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts


@dataclass
class Lab:
    """The processes of one running lab; ``start()`` then ``stop()`` (idempotent)."""

    config: LabConfig
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    children: list[_Child] = field(default_factory=list)
    redis: RedisProcess | None = None
    token: str = ""
    stop_signal: int | None = None  # set by the signal handler of `up`
    _lock: IO[str] | None = None

    # -- public --

    def acquire(self) -> bool:
        """Takes the lab lock; False when another launcher holds it (the lab is up)."""
        cfg = self.config
        for folder in (cfg.data_dir, cfg.run_dir, cfg.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        lock = open(cfg.run_dir / "lab.lock", "a+")  # noqa: SIM115 (held for the lab's life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock = lock
        return True

    def start(self) -> None:
        cfg = self.config
        self._take_over_stale()
        self._check_ports()
        write_pid_file(
            cfg.run_dir / "lab.pid",
            os.getpid(),
            dashboard_url=cfg.dashboard_url,
            api_url=cfg.api_url,
            token_file=str(cfg.token_file),
        )
        from backend.core.config import Settings
        from backend.core.security import resolve_token

        self.redis = start_redis(cfg.data_dir, cfg.redis_port)
        self._say(f"Redis is up on port {self.redis.port}")
        write_pid_file(cfg.run_dir / "redis.pid", self.redis.pid)

        env = self._child_env()
        settings = Settings(data_dir=cfg.data_dir, database_url=env.get("PFT_DATABASE_URL"))
        # The token exists before any child starts, so the dashboard always finds it.
        self.token = resolve_token(settings)

        pft = _pft_command()
        self._check_stop()
        self._spawn("api", [*pft, "api", "--host", cfg.host, "--port", str(cfg.api_port)], env)
        self._wait_http("api", cfg.api_url + API_HEALTH_PATH)
        self._spawn("worker", [*pft, "worker"], env)
        self._spawn("dashboard", _dashboard_command(cfg), env)
        self._wait_http("dashboard", cfg.dashboard_url + DASHBOARD_HEALTH_PATH)
        self._check_running("worker")
        self._say(
            f"pft-lab is up.\n"
            f"  dashboard:  {cfg.dashboard_url}\n"
            f"  API:        {cfg.api_url}  (token in {cfg.token_file})\n"
            f"  logs:       {cfg.logs_dir}\n"
            f"Press Ctrl-C to stop."
        )
        if cfg.auto_pretrain:
            self._queue_pretrain()

    def watch(self, poll_s: float = 1.0) -> None:
        """Blocks while the lab runs, restarting a service that exits on its own (a worker
        killed by the OOM killer, say); raises LaunchError when one keeps crashing or Redis
        exits (the services hold its URL and password)."""
        while True:
            self._check_stop()
            for child in list(self.children):
                if child.proc.poll() is not None:
                    self._restart(child)
            if self.redis is not None and self.redis.process.poll() is not None:
                raise LaunchError(f"Redis exited; see {self.redis.log_path}")
            time.sleep(poll_s)

    def stop(self) -> None:
        """Stops every process this lab started, newest first; leaves none behind."""
        grace = self.config.stop_grace_s
        for child in reversed(self.children):
            stop_group(child.proc.pid, child.proc.pid, grace)  # a session leader: pgid == pid
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=1)
            (self.config.run_dir / f"{child.name}.pid").unlink(missing_ok=True)
        self.children.clear()
        if self.redis is not None:
            self.redis.stop(timeout=grace)
            self.redis = None
        (self.config.run_dir / "redis.pid").unlink(missing_ok=True)
        (self.config.run_dir / "lab.pid").unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- steps --

    def _restart(self, child: _Child) -> None:
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
        if len(child.restarts) >= MAX_RESTARTS:
            raise LaunchError(
                f"{child.name} exited with code {child.proc.returncode} and was restarted "
                f"{MAX_RESTARTS} times in {RESTART_WINDOW_S:.0f} s; see {child.log}\n"
                f"{_tail(child.log)}"
            )
        self._say(f"{child.name} exited with code {child.proc.returncode}; restarting it")
        # Whatever the leader left in its group (a pool process) goes before the new one starts.
        stop_group(child.proc.pid, child.proc.pid, self.config.stop_grace_s)
        self.children.remove(child)
        new = self._spawn(child.name, child.argv, child.env)
        new.restarts = [*child.restarts, now]

    def _take_over_stale(self) -> None:
        """Stops processes named by pid files a dead launcher left behind."""
        for path in sorted(self.config.run_dir.glob("*.pid")):
            record = read_pid_file(path)
            if record and path.stem != "lab" and pid_file_is_live(record):
                self._say(f"stopping {path.stem} (pid {record['pid']}) left by a previous run")
                stop_group(record["pid"], record.get("pgid"), self.config.stop_grace_s)
            path.unlink(missing_ok=True)

    def _check_ports(self) -> None:
        cfg = self.config
        for var, port in (
            ("PFT_REDIS_PORT", cfg.redis_port),
            ("PFT_API_PORT", cfg.api_port),
            ("PFT_DASHBOARD_PORT", cfg.dashboard_port),
        ):
            if port is not None and not port_free(cfg.host, port):
                raise LaunchError(
                    f"port {port} ({var}) on {cfg.host} is in use by another program; "
                    f"set {var} to a free port"
                )

    def _child_env(self) -> dict[str, str]:
        cfg = self.config
        env = dict(os.environ)
        env.update(
            PFT_DATA_DIR=str(cfg.data_dir),
            PFT_BROKER_URL=self.redis.url,
            PFT_DATABASE_URL=env.get("PFT_DATABASE_URL") or f"sqlite:///{cfg.data_dir / 'lab.db'}",
            PFT_API_URL=cfg.api_url,
            PFT_API_PORT=str(cfg.api_port),
            PFT_DASHBOARD_PORT=str(cfg.dashboard_port),
            PYTHONUNBUFFERED="1",
        )
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> _Child:
        log = self.config.logs_dir / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.config.data_dir,
                start_new_session=True,  # its own process group: stopped as one
            )
        child = _Child(name, proc, log, argv, env)
        self.children.append(child)
        write_pid_file(self.config.run_dir / f"{name}.pid", proc.pid, argv=argv)
        return child

    def _check_stop(self) -> None:
        if self.stop_signal is not None:
            raise StopRequested(signal.Signals(self.stop_signal).name)

    def _child(self, name: str) -> _Child:
        return next(c for c in self.children if c.name == name)

    def _check_running(self, name: str) -> None:
        child = self._child(name)
        if child.proc.poll() is not None:
            raise LaunchError(
                f"{name} exited with code {child.proc.returncode} while starting; "
                f"see {child.log}\n{_tail(child.log)}"
            )

    def _wait_http(self, name: str, url: str) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            self._check_stop()
            self._check_running(name)
            if http_ok(url):
                return
            time.sleep(0.25)
        raise LaunchError(
            f"{name} did not become healthy at {url} within {self.config.start_timeout_s:.0f} s "
            f"(PFT_START_TIMEOUT_S); see {self._child(name).log}"
        )

    def _queue_pretrain(self) -> None:
        cfg = self.config
        if cfg.backbone_file.exists():
            return
        try:
            jobs = _api(cfg.api_url, self.token, "GET", "/api/v1/jobs?kind=pretrain")
            items = jobs.get("items", jobs) if isinstance(jobs, dict) else jobs
            if any(j.get("status") in {"queued", "running"} for j in items or []):
                self._say(f"pre-training of {BUILTIN_BACKBONE} is already queued")
                return
            job = _api(cfg.api_url, self.token, "POST", "/api/v1/jobs", {"kind": "pretrain"})
        except LaunchError as exc:
            self._say(f"could not queue the pre-training of {BUILTIN_BACKBONE}: {exc}")
            return
        self._say(
            f"{BUILTIN_BACKBONE} is missing: queued its pre-training as job {job.get('id')} "
            f"(progress on the dashboard's Jobs page)"
        )

    def _say(self, text: str) -> None:
        print(f"[pft up] {text}" if "\n" not in text else text, file=self.out, flush=True)


def _api(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise LaunchError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LaunchError(f"{method} {path} failed: {exc}") from None


def _pft_command() -> list[str]:
    """The `pft` console script of this interpreter, or an equivalent `python -c`."""
    script = Path(sys.executable).with_name("pft")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from lab.cli import main; main()"]


def _dashboard_command(cfg: LabConfig) -> list[str]:
    import dashboard

    # __path__, not __file__: an editable install may present the package as a namespace one.
    app = Path(next(iter(dashboard.__path__))) / "app.py"
    streamlit = Path(sys.executable).with_name("streamlit")
    head = [str(streamlit)] if streamlit.exists() else [sys.executable, "-m", "streamlit"]
    return [
        *head,
        "run",
        str(app),
        "--server.port",
        str(cfg.dashboard_port),
        "--server.address",
        cfg.host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",  # no "Deploy" button: this lab is already deployed
    ]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in text)


@contextlib.contextmanager
def _stop_on_signals(lab: Lab) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP ask the lab to stop.

    The handler only records the signal; the lab checks it between steps. An exception raised
    from inside the handler could land between starting a process and recording it, and leave
    that process behind; a second Ctrl-C while stopping is ignored for the same reason.
    """

    def handler(signum: int, frame: Any) -> None:
        lab.stop_signal = signum

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def up(config: LabConfig | None = None) -> None:
    """Starts the lab and blocks until Ctrl-C/SIGTERM; exits non-zero if it cannot start."""
    try:
        config = config or LabConfig.from_env()
    except LaunchError as exc:
        print(f"pft up: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    lab = Lab(config)
    if not lab.acquire():
        record = read_pid_file(config.run_dir / "lab.pid") or {}
        print(
            f"pft-lab is already up at {record.get('dashboard_url', config.dashboard_url)} "
            f"(launcher pid {record.get('pid', '?')}; token in "
            f"{record.get('token_file', config.token_file)})"
        )
        return
    code = 0
    with _stop_on_signals(lab):
        try:
            lab.start()
            lab.watch()
        except StopRequested:
            print("\n[pft up] stopping ...", flush=True)
        except (LaunchError, RedisStartError) as exc:
            print(f"pft up: {exc}", file=sys.stderr, flush=True)
            code = 1
        finally:
            lab.stop()
    print("[pft up] stopped.", flush=True)
    if code:
        raise SystemExit(code)


__all__ = ["Lab", "LabConfig", "LaunchError", "StopRequested", "up"]

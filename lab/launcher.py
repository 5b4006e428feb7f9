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

Settings: `lab.config.LauncherSettings` (``PFT_DATA_DIR``, ``PFT_API_PORT``,
``PFT_DASHBOARD_PORT``, ``PFT_REDIS_PORT``, ``PFT_LAB_HOST``, ``PFT_AUTO_PRETRAIN``,
``PFT_STOP_GRACE_S``, ``PFT_START_TIMEOUT_S``). The worker reaches the lab through the API only:
it gets the API's URL and the worker token (``PFT_API_URL``, ``PFT_WORKER_TOKEN``), never the
database URL; both tokens exist before any service starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from contract.api import JobsPage
from contract.layout import DataLayout
from contract.vocab import API_PREFIX, JobKind, JobStatus
from lab.config import DATA_UMASK, LauncherSettings, SettingsError, load_settings
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
from pft.shipped import weights_available

API_HEALTH_PATH = f"{API_PREFIX}/health"
DASHBOARD_HEALTH_PATH = "/_stcore/health"
MAX_RESTARTS = 5  # a service that exits this often within RESTART_WINDOW_S stops the lab
RESTART_WINDOW_S = 300.0


class LaunchError(RuntimeError):
    """The lab could not start; the message says why and what to do."""


class StopRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived: unwind and stop the lab."""


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

    config: LauncherSettings
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    children: list[_Child] = field(default_factory=list)
    redis: RedisProcess | None = None
    token: str = ""
    stop_signal: int | None = None  # set by the signal handler of `up`
    _lock: IO[str] | None = None

    @property
    def layout(self) -> DataLayout:
        return self.config.layout

    # -- public --

    def acquire(self) -> bool:
        """Takes the lab lock; False when another launcher holds it (the lab is up)."""
        private_folders(self.layout.root, self.layout.run, self.layout.logs)
        lock = open(self.layout.run / "lab.lock", "a+")  # noqa: SIM115 (held for the lab's life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock = lock
        return True

    def start(self) -> None:
        cfg, layout = self.config, self.layout
        self._take_over_stale()
        self._check_ports()
        write_pid_file(
            layout.run / "lab.pid",
            os.getpid(),
            dashboard_url=cfg.dashboard_url,
            api_url=cfg.lab_api_url,
            token_file=str(layout.api_token),
        )
        self.redis = start_redis(layout.root, cfg.redis_port)
        self._say(f"Redis is up on port {self.redis.port}")
        if self.redis.set_aside is not None:
            self._say(
                f"warning: Redis could not read its append-only file; it was moved to "
                f"{self.redis.set_aside} and Redis started empty (queued jobs are sent again "
                "from the database)"
            )
        write_pid_file(layout.run / "redis.pid", self.redis.pid)

        env = self._child_env()
        # Both tokens exist before any child starts: the dashboard always finds the users'
        # token, and the worker is handed its own (the API reads the same file).
        self.token, worker_token = _tokens(layout, env.get("PFT_DATABASE_URL"))

        pft = _pft_command()
        host, port = cfg.lab_host, str(cfg.api_port)
        self._check_stop()
        self._spawn("api", [*pft, "api", "--host", host, "--port", port], env)
        self._wait_http("api", cfg.lab_api_url + API_HEALTH_PATH)
        self._spawn("worker", [*pft, "worker"], _worker_env(env, worker_token))
        self._spawn("dashboard", _dashboard_command(cfg), _dashboard_env(env))
        self._wait_http("dashboard", cfg.dashboard_url + DASHBOARD_HEALTH_PATH)
        self._check_running("worker")
        self._say(
            f"pft-lab is up.\n"
            f"  dashboard:  {cfg.dashboard_url}{_login_note(cfg, layout)}\n"
            f"  API:        {cfg.lab_api_url}  (token in {layout.api_token})\n"
            f"  logs:       {layout.logs}\n"
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
            (self.layout.run / f"{child.name}.pid").unlink(missing_ok=True)
        self.children.clear()
        if self.redis is not None:
            self.redis.stop(timeout=grace)
            self.redis = None
        (self.layout.run / "redis.pid").unlink(missing_ok=True)
        (self.layout.run / "lab.pid").unlink(missing_ok=True)
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
        for path in sorted(self.layout.run.glob("*.pid")):
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
            if port is not None and not port_free(cfg.lab_host, port):
                raise LaunchError(
                    f"port {port} ({var}) on {cfg.lab_host} is in use by another program; "
                    f"set {var} to a free port"
                )

    def _child_env(self) -> dict[str, str]:
        """What every service shares; `_api_env` & co. add and remove per service."""
        cfg = self.config
        env = dict(os.environ)
        env.update(
            PFT_DATA_DIR=str(self.layout.root),
            PFT_BROKER_URL=self.redis.url,
            PFT_DATABASE_URL=env.get("PFT_DATABASE_URL") or self.layout.sqlite_url,
            PFT_API_URL=cfg.lab_api_url,
            PFT_API_PORT=str(cfg.api_port),
            PFT_DASHBOARD_PORT=str(cfg.dashboard_port),
            PYTHONUNBUFFERED="1",
        )
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> _Child:
        log = self.layout.logs / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.layout.root,
                start_new_session=True,  # its own process group: stopped as one
            )
        child = _Child(name, proc, log, argv, env)
        self.children.append(child)
        write_pid_file(self.layout.run / f"{name}.pid", proc.pid, argv=argv)
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
        """Submits the backbone's pre-training through the API, as any client would, unless
        its weights exist: the data folder's, or the ones the package ships (`pft.shipped`)."""
        if weights_available(
            BUILTIN_BACKBONE, self.layout, use_shipped=self.config.shipped_weights
        ):
            return
        base, jobs_path = self.config.lab_api_url, f"{API_PREFIX}/jobs"
        try:
            page = _api(base, self.token, "GET", f"{jobs_path}?kind={JobKind.PRETRAIN}")
            pending = {JobStatus.QUEUED, JobStatus.RUNNING}
            if any(j.status in pending for j in JobsPage.model_validate(page).items):
                self._say(f"pre-training of {BUILTIN_BACKBONE} is already queued")
                return
            job = _api(base, self.token, "POST", jobs_path, {"kind": JobKind.PRETRAIN})
        except (LaunchError, ValueError) as exc:
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


def _tokens(layout: DataLayout, database_url: str | None) -> tuple[str, str]:
    """The users' and the workers' tokens: from their variables, else their files in the data
    folder, generated there (0600) when absent, exactly as the API will read them."""
    from backend.core.config import ApiSettings
    from backend.core.security import api_token, worker_token

    settings = ApiSettings(data_dir=layout.root, database_url=database_url)
    return api_token(settings), worker_token(settings)


def _worker_env(env: dict[str, str], worker_token: str) -> dict[str, str]:
    """A worker holds the API's URL and its own credential, never the database URL nor the
    users' token: it reports everything through the worker routes."""
    out = {k: v for k, v in env.items() if k not in {"PFT_DATABASE_URL", "PFT_API_TOKEN"}}
    out["PFT_WORKER_TOKEN"] = worker_token
    return out


def _dashboard_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in {"PFT_DATABASE_URL", "PFT_WORKER_TOKEN"}}


def _pft_command() -> list[str]:
    """The `pft` console script of this interpreter, or an equivalent `python -c`."""
    script = Path(sys.executable).with_name("pft")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from lab.cli import main; main()"]


def _dashboard_command(cfg: LauncherSettings) -> list[str]:
    import dashboard

    # __path__, not __file__: an editable install may present the package as a namespace one.
    # server.py, not app.py: it serves the app behind its door (Host/Origin checks, the login
    # when bound to anything but loopback, no framing), `dashboard.door`.
    app = Path(next(iter(dashboard.__path__))) / "server.py"
    streamlit = Path(sys.executable).with_name("streamlit")
    head = [str(streamlit)] if streamlit.exists() else [sys.executable, "-m", "streamlit"]
    return [
        *head,
        "run",
        str(app),
        "--server.port",
        str(cfg.dashboard_port),
        "--server.address",
        cfg.lab_host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",  # no "Deploy" button: this lab is already deployed
    ]


def _login_note(cfg: LauncherSettings, layout: DataLayout) -> str:
    """How to log in, where the dashboard asks (bound to anything but loopback, or forced)."""
    from pydantic import ValidationError

    from dashboard.config import DashboardSettings

    try:
        if not DashboardSettings().door_policy(cfg.lab_host).login:
            return ""
    except ValidationError:  # the dashboard's own log says what is wrong
        return ""
    return f"  (log in with the API token in {layout.api_token})"


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


def private_folders(*folders: Path) -> None:
    """The data folder is private to its user: each folder 0700 (created so, or tightened when
    it is ours and looser). `up` sets umask 077 for itself and the services it starts, so the
    database, logs, pid files, Redis' files and artifacts are created 0600 / 0700."""
    for folder in folders:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            folder.chmod(0o700)


def up(config: LauncherSettings | None = None) -> None:
    """Starts the lab and blocks until Ctrl-C/SIGTERM; exits non-zero if it cannot start."""
    os.umask(DATA_UMASK)  # before anything is written; the services inherit it
    try:
        config = config or load_settings()
    except SettingsError as exc:
        print(f"pft up: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    lab = Lab(config)
    if not lab.acquire():
        record = read_pid_file(config.layout.run / "lab.pid") or {}
        print(
            f"pft-lab is already up at {record.get('dashboard_url', config.dashboard_url)} "
            f"(launcher pid {record.get('pid', '?')}; token in "
            f"{record.get('token_file', config.layout.api_token)})"
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


__all__ = ["Lab", "LaunchError", "StopRequested", "up"]

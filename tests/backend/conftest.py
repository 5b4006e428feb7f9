"""Backend fixtures: real databases (SQLite file and PostgreSQL), real Redis, the real app.

``db_url`` is parametrized over both databases; each test module gets its own SQLite file or
PostgreSQL schema (migrated once) and every test starts from empty tables. Redis tests use
database 14 and a queue name unique to the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.config import ApiSettings
from backend.db.models import Base
from backend.db.session import dispose_engine, get_engine, make_sessionmaker, migrate
from backend.main import create_app

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/14"
TOKEN = "test-token-0123456789"
WORKER_TOKEN = "test-worker-token-9876543210"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database for one test module."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'lab.db'}"
        migrate(url)
        yield url
        dispose_engine(url)
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        migrate(url)
        yield url
    finally:
        dispose_engine(url)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def empty_db(db_url: str) -> str:
    """``db_url`` with every table emptied (ids keep counting up, which tests must not assume)."""
    with get_engine(db_url).begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return db_url


@pytest.fixture
def session(empty_db: str) -> Iterator[Session]:
    with make_sessionmaker(get_engine(empty_db))() as s:
        yield s


@pytest.fixture
def queue_name() -> Iterator[str]:
    """A unique queue on Redis database 14, deleted afterwards (with the unacked hash)."""
    name = f"pft-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")


@pytest.fixture
def settings(empty_db: str, tmp_path, queue_name: str) -> ApiSettings:
    return ApiSettings(
        data_dir=tmp_path / "data",
        database_url=empty_db,
        broker_url=REDIS_URL,
        queue=queue_name,
        api_token=TOKEN,
        worker_token=WORKER_TOKEN,
        reconcile_interval_s=0,
        enqueue_grace_s=0,
    )


@pytest.fixture
def client(settings: ApiSettings) -> Iterator[TestClient]:
    """The real app (lifespan: migrations) with the users' bearer token on every request."""
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


@pytest.fixture
def worker_client(client: TestClient) -> Iterator[TestClient]:
    """The same app as ``client``, as a worker sees it: the worker token on every request."""
    with TestClient(client.app, raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {WORKER_TOKEN}"
        yield c

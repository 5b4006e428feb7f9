"""Alembic migrations produce exactly the schema of `backend.db.models`, and 0002 turns stored
job configs of the old shape into job specs (and back)."""

from __future__ import annotations

import multiprocessing

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from backend.db.models import Base
from backend.db.session import MIGRATIONS_DIR, dispose_engine, get_engine, migrate
from pft.jobs.specs import FinetuneSpec, PretrainSpec, SoupSpec, spec_from_dict


def test_migrated_schema_matches_models(db_url: str) -> None:
    with get_engine(db_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrate_is_idempotent(db_url: str) -> None:
    migrate(db_url)
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
        assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'lab.db'}"
    migrate(url)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    dispose_engine(url)


def _alembic(url: str, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


HPARAMS = {"epochs": 2, "lr": 1e-3, "seed": 3}
OLD = {
    "finetune": {
        "model": "pft/vit-micro",
        "model_overrides": {"depth": 2},
        "pretrained": False,
        "dataset": "synthetic",
        "strategy": {
            "name": "angle_topk",
            "k": 2,
            "order": "smallest",
            "angles": {"ATTN.0": 1.0, "FFN.0": 2.0},
            "reference_job": 1,
        },
        "hparams": HPARAMS,
        "shifts": ["blur:2"],
    },
    "plain": {
        "model": "pft/vit-micro",
        "model_overrides": {},
        "pretrained": True,
        "dataset": "synthetic",
        "strategy": {"name": "attn_only"},
        "hparams": HPARAMS,
        "shifts": [],
    },
    "soup": {"ingredients": [1, 2], "method": "greedy", "shifts": ["blur"]},
    "pretrain": {"model": "pft/vit-tiny-fmnist", "epochs": 4},
    "pretrain_default": {"model": "pft/vit-tiny-fmnist"},
}
KINDS = {"finetune": "finetune", "plain": "finetune", "soup": "soup"}


def test_0002_turns_old_configs_into_specs_and_back(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    _alembic(url, "upgrade", "0001")
    jobs = sa.table(
        "jobs",
        *(sa.column(c) for c in ("id", "kind", "status", "model", "progress", "attempts")),
        sa.column("config", sa.JSON),
        sa.column("progress_info", sa.JSON),
        sa.column("cancel_requested", sa.Boolean),
        sa.column("created_at", sa.DateTime),
    )
    ids = {}
    with get_engine(url).begin() as conn:
        for i, (label, config) in enumerate(OLD.items(), start=1):
            kind = KINDS.get(label, "pretrain")
            conn.execute(
                sa.insert(jobs).values(
                    id=i,
                    kind=kind,
                    status="succeeded",
                    model=config.get("model", "pft/vit-micro"),
                    config=config,
                    progress=0.0,
                    progress_info={},
                    attempts=0,
                    cancel_requested=False,
                    created_at=sa.func.current_timestamp(),
                )
            )
            ids[label] = i
    _alembic(url, "upgrade", "head")
    with get_engine(url).connect() as conn:
        rows = {r.id: (r.kind, r.config) for r in conn.execute(sa.select(jobs))}
    specs = {label: spec_from_dict(*rows[i]) for label, i in ids.items()}

    topk = specs["finetune"]
    assert isinstance(topk, FinetuneSpec)
    assert (topk.strategy, topk.pretrained, topk.model_overrides) == (
        "angle_topk",
        False,
        {"depth": 2},
    )
    assert topk.strategy_params == {
        "k": 2,
        "order": "smallest",
        "angles": {"ATTN.0": 1.0, "FFN.0": 2.0},
        "reference_job": 1,
    }
    assert (topk.hparams.seed, topk.hparams.epochs, topk.shifts) == (3, 2, ["blur:2"])
    assert rows[ids["plain"]][1] == FinetuneSpec.from_dict(rows[ids["plain"]][1]).to_dict() | {
        "hparams": HPARAMS
    }
    assert specs["plain"].strategy == "attn_only" and specs["plain"].strategy_params == {}
    assert specs["soup"] == SoupSpec(method="greedy", ingredients=[1, 2], shifts=["blur"])
    assert rows[ids["soup"]][1] == specs["soup"].to_dict()
    assert specs["pretrain"] == PretrainSpec(epochs=4)
    assert rows[ids["pretrain"]][1] == PretrainSpec(epochs=4).to_dict()
    assert specs["pretrain_default"] == PretrainSpec()

    _alembic(url, "downgrade", "0001")
    with get_engine(url).connect() as conn:
        back = {r.id: r.config for r in conn.execute(sa.select(jobs.c.id, jobs.c.config))}
    assert back == {ids[label]: config for label, config in OLD.items()}
    dispose_engine(url)


def _migrate(url: str) -> None:
    migrate(url)


@pytest.mark.slow
def test_concurrent_first_migrations_do_not_collide(tmp_path) -> None:
    """Several API processes starting together on a fresh SQLite file."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate, args=(url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    dispose_engine(url)

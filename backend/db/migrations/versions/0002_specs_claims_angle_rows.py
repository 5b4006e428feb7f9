"""Job specs, claim tokens and full angle rows.

* ``jobs.claim``: the current attempt's token; every worker report must carry it.
* ``angles.unit/group/block/part``: an angle row as the engine measures it
  (`contract.api.AngleRow`), so the API no longer loses them.
* Stored job configs become the job's spec (`pft.jobs.specs`, ``to_dict()``):
  fine-tuning ``{"strategy": {"name", ...params}}`` becomes ``"strategy": name`` plus
  ``"strategy_params"``; soups gain ``params``; pre-training keeps ``epochs`` and gains
  ``subset`` (its ``model`` stays in the ``jobs.model`` column).

The conversions (and the job kinds they dispatch on) are written out here, not imported, so
that this revision means the same thing however the specs and the vocabulary evolve later.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:00:00
"""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Config = dict[str, Any]


def finetune_to_spec(c: Config) -> Config:
    if isinstance(c.get("strategy"), str):  # already a spec
        return c
    strategy = dict(c["strategy"])
    name = strategy.pop("name")
    return {
        "model": c.get("model"),
        "dataset": c.get("dataset"),
        "strategy": name,
        "strategy_params": strategy,
        "hparams": dict(c.get("hparams") or {}),
        "pretrained": bool(c.get("pretrained", True)),
        "model_overrides": dict(c.get("model_overrides") or {}),
        "shifts": list(c.get("shifts") or []),
    }


def finetune_from_spec(c: Config) -> Config:
    if not isinstance(c.get("strategy"), str):
        return c
    return {
        "model": c.get("model"),
        "model_overrides": dict(c.get("model_overrides") or {}),
        "pretrained": bool(c.get("pretrained", True)),
        "dataset": c.get("dataset"),
        "strategy": {"name": c["strategy"], **(c.get("strategy_params") or {})},
        "hparams": dict(c.get("hparams") or {}),
        "shifts": list(c.get("shifts") or []),
    }


def soup_to_spec(c: Config) -> Config:
    return {
        "method": c.get("method"),
        "ingredients": list(c.get("ingredients") or []),
        "params": dict(c.get("params") or {}),
        "shifts": list(c.get("shifts") or []),
    }


def soup_from_spec(c: Config) -> Config:
    return {
        "ingredients": list(c.get("ingredients") or []),
        "method": c.get("method"),
        "shifts": list(c.get("shifts") or []),
    }


def pretrain_to_spec(c: Config) -> Config:
    return {"epochs": c.get("epochs"), "subset": c.get("subset")}


def pretrain_from_spec(c: Config, model: str | None) -> Config:
    out: Config = {"model": model}
    if c.get("epochs") is not None:
        out["epochs"] = c["epochs"]
    return out


_jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("model", sa.String),
    sa.column("config", sa.JSON),
)


def _convert(convert: Callable[[str, Config, str | None], Config]) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_jobs.c.id, _jobs.c.kind, _jobs.c.model, _jobs.c.config))
    for job_id, kind, model, config in rows.all():
        new = convert(kind, dict(config or {}), model)
        if new != config:
            bind.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(config=new))


def _up(kind: str, c: Config, model: str | None) -> Config:
    if kind == "finetune":
        return finetune_to_spec(c)
    if kind == "soup":
        return soup_to_spec(c)
    if kind == "pretrain":
        return pretrain_to_spec(c)
    return c


def _down(kind: str, c: Config, model: str | None) -> Config:
    if kind == "finetune":
        return finetune_from_spec(c)
    if kind == "soup":
        return soup_from_spec(c)
    if kind == "pretrain":
        return pretrain_from_spec(c, model)
    return c


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.String(length=64), nullable=True))
    with op.batch_alter_table("angles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unit", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("group", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("block", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("part", sa.String(length=64), nullable=True))
    _convert(_up)


def downgrade() -> None:
    _convert(_down)
    with op.batch_alter_table("angles", schema=None) as batch_op:
        batch_op.drop_column("part")
        batch_op.drop_column("block")
        batch_op.drop_column("group")
        batch_op.drop_column("unit")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("claim")

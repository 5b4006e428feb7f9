"""The database schema of pft-lab, defined once; only the API reads and writes it (workers
report over HTTP, `backend.api.routes.worker`).

SQLAlchemy 2 declarative models, no FastAPI. The database is the source of truth for jobs; the
broker only carries job ids. Results are keyed so that a redelivered task overwrites instead of
duplicating: metrics by (job, epoch), angles by (job, epoch, scope, name), artifacts by
(job, kind), the soup record by its job.

Changing this module means adding an Alembic migration in ``backend/db/migrations/versions``
(a test compares the migrated schema with these models).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from contract.vocab import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use backend.db.models.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Experiment(Base):
    """A named group of jobs: one model and dataset, strategies x seeds, shared hyperparameters."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    dataset: Mapped[str] = mapped_column(String(200))
    hparams: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the request, as submitted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    jobs: Mapped[list[Job]] = relationship(back_populates="experiment", order_by="Job.id")


class Job(Base):
    """One unit of work for a worker: pre-training, a fine-tuning run or a soup."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_kind", "status", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # contract.vocab.JobKind
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)  # JobStatus
    config: Mapped[dict[str, Any]] = mapped_column()  # the spec: pft.jobs.specs, to_dict()
    # Denormalised from `config` for filtering, summaries and soup checks.
    model: Mapped[str | None] = mapped_column(String(200))
    dataset: Mapped[str | None] = mapped_column(String(200))
    strategy: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(Integer)
    tuned_params: Mapped[int | None] = mapped_column(BigInteger)  # None: no shape table yet
    total_params: Mapped[int | None] = mapped_column(BigInteger)

    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0-1
    progress_info: Mapped[dict[str, Any]] = mapped_column(default=dict)  # epoch, step, images/s
    result: Mapped[dict[str, Any] | None] = mapped_column()  # the run's summary
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    # The current attempt's token: every worker report must carry it (None while queued).
    claim: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    experiment: Mapped[Experiment | None] = relationship(back_populates="jobs")
    soup: Mapped[Soup | None] = relationship(back_populates="job", uselist=False)


class Metric(Base):
    """Metrics of one epoch of one job; a redelivered epoch overwrites its row."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float)
    heldout_acc: Mapped[float | None] = mapped_column(Float)
    heldout_loss: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    images_per_sec: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)  # any other numbers
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Angle(Base):
    """A fine-tuned angle (degrees) of one unit or tensor, per epoch or final
    (`contract.vocab.FINAL_EPOCH`): one `contract.api.AngleRow`."""

    __tablename__ = "angles"
    __table_args__ = (UniqueConstraint("job_id", "epoch", "scope", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(8))  # contract.vocab.AngleScope
    name: Mapped[str] = mapped_column(String(300))  # "ATTN.3" or "blocks.3.attn.qkv.weight"
    angle_deg: Mapped[float] = mapped_column(Float)
    rel_change: Mapped[float | None] = mapped_column(Float)  # ||w - w0|| / ||w0||
    unit: Mapped[str | None] = mapped_column(String(64))  # the tensor's unit (a unit: itself)
    group: Mapped[str | None] = mapped_column(String(64))  # the unit's group ("ATTN")
    block: Mapped[int | None] = mapped_column(Integer)  # the unit's block in depth order
    part: Mapped[str | None] = mapped_column(String(64))  # the tensor's part ("qkv", "fc1")


class Soup(Base):
    """A soup job's recipe and outcome."""

    __tablename__ = "soups"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), unique=True, index=True
    )
    method: Mapped[str] = mapped_column(String(16))  # a merge method of pft.soups.registry
    ingredients: Mapped[list[Any]] = mapped_column()  # fine-tuning job ids, in request order
    shifts: Mapped[list[Any]] = mapped_column(default=list)
    # Greedy: [{"order", "ingredient", "job_id", "individual_score", "candidate_score",
    # "accepted"}], one entry per ingredient tried (pft.soups).
    trace: Mapped[list[Any]] = mapped_column(default=list)
    score_in: Mapped[float | None] = mapped_column(Float)  # in-distribution test accuracy
    scores_out: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {shift: accuracy}
    # Per-unit mixing weights of the merge (`contract.api.SoupOutcome.mixing`); {} for methods
    # that weigh no unit and for soups recorded before migration 0004.
    mixing: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))

    job: Mapped[Job] = relationship(back_populates="soup")


class Artifact(Base):
    """A file a job produced (checkpoint delta, metrics.json, ...), one per (job, kind)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # "delta", "metrics", "angles", "soup"
    location: Mapped[str] = mapped_column(Text)  # path below the artifact store, or a URL
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ShapeTable(Base):
    """A unit-map shape table (pft.model_catalog format) a worker computed, keyed like its file.

    Lets the API preview unit maps of models no API host has a table for (scale-out mode).
    """

    __tablename__ = "shape_tables"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)  # model_catalog.shape_key
    model: Mapped[str] = mapped_column(String(200))
    table: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` for one submitting route: what the first request created.

    Written in the same transaction as the rows it names, so a retry after a broken connection
    finds either nothing (the first request was rolled back) or exactly what was committed.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("route", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    route: Mapped[str] = mapped_column(String(64))  # "POST /jobs", ...
    key: Mapped[str] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64))  # the validated request, canonical
    experiment_id: Mapped[int | None] = mapped_column(Integer)
    job_ids: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

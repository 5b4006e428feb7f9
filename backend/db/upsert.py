"""``INSERT ... ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL, the lab's two databases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session


def upsert(session: Session, model: type, values: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Inserts ``values``, or updates the other columns of the row with the same ``keys``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the lab supports SQLite and PostgreSQL
        raise NotImplementedError(f"upserts on {dialect}")
    stmt = insert(model).values(**values)
    changed = {k: stmt.excluded[k] for k in values if k not in keys}
    session.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=changed))

"""Tables: current resources, their full history, and the outbox.

Typed SQLAlchemy 2 models; dialect differences only through ``with_variant`` (JSONB on PostgreSQL,
JSON text on SQLite) and the UTC timestamp type below.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, MetaData, String, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; timestamptz on PostgreSQL, sortable naive UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonDoc = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its 64-bit rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JsonDoc, datetime: UTCDateTime()}


class ResourceRow(Base):
    """The current version of every resource (deleted ones stay as tombstones)."""

    __tablename__ = "resource"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime]
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, nullable=True)

    __table_args__ = (
        Index("ix_resource_type_updated", "resource_type", "last_updated"),
        # search on PostgreSQL: live rows by (type, id) as an index-only scan (migration 0006)
        Index("ix_resource_live", "resource_type", "id", postgresql_where=text("deleted IS FALSE")),
    )


class ResourceHistoryRow(Base):
    """Every version ever written, append-only. ``pk`` orders history and backs cursor paging."""

    __tablename__ = "resource_history"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime]
    method: Mapped[str] = mapped_column(String(8))  # POST | PUT | PATCH | DELETE: how the version came to be
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, nullable=True)

    __table_args__ = (
        Index("uq_resource_history_version", "resource_type", "id", "version_id", unique=True),
        Index("ix_resource_history_type_pk", "resource_type", "pk"),
        Index("ix_resource_history_updated", "last_updated"),
    )


class OutboxRow(Base):
    """Work caused by a change, written in the change's own transaction, delivered at least once."""

    __tablename__ = "outbox"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(64))
    # Idempotency key (e.g. "Subscription/1:Patient/5/_history/3"): receivers drop repeats by it.
    key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivering|done|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=10)
    next_attempt_at: Mapped[datetime]
    created_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The dispatcher holding the row while ``delivering`` (its heartbeat renews next_attempt_at, the lease).
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)


# Core-level handles for fast statements (the repository writes with SQLAlchemy Core, not the ORM).
RESOURCE = cast(Table, ResourceRow.__table__)
RESOURCE_HISTORY = cast(Table, ResourceHistoryRow.__table__)
OUTBOX = cast(Table, OutboxRow.__table__)

"""The durable HL7 v2 message store: every message received is committed here before any ACK leaves.

One row per message: who sent it (MSH-3|MSH-4), its control id (MSH-10, unique per sender, so a re-sent
message finds its original and gets the original ACK back), type, version, raw text, the status
(received -> processed | error | rejected), the error, the ACK(s) sent, and the resources it produced.
This is the adapter's own table; FHIR resources are written only through the FHIR services.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, Engine, Index, Integer, String, Table, Text, UniqueConstraint, Update, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from fhir_server.storage.models import Base, BigId

RECEIVED = "received"
PROCESSED = "processed"
ERROR = "error"
REJECTED = "rejected"
STATUSES = (RECEIVED, PROCESSED, ERROR, REJECTED)
ACK_SEPARATOR = "\n"  # several ACKs (enhanced mode: accept + application) kept in one column; ER7 uses CR


class Hl7MessageRow(Base):
    __tablename__ = "hl7_message"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(255))  # "MSH-3|MSH-4"
    control_id: Mapped[str | None] = mapped_column(String(199), nullable=True)  # MSH-10; NULL: none given
    message_type: Mapped[str] = mapped_column(String(32))  # e.g. ORU^R01
    version: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    raw: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    ack: Mapped[str | None] = mapped_column(Text, nullable=True)
    resources: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # "Type/id" written
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        UniqueConstraint("sender", "control_id", name="uq_hl7_message_sender_control_id"),
        Index("ix_hl7_message_status_received", "status", "received_at"),
    )


HL7_MESSAGE = cast(Table, Hl7MessageRow.__table__)


@dataclass(frozen=True)
class StoredMessage:
    pk: int
    sender: str
    control_id: str | None
    message_type: str
    version: str
    received_at: datetime
    raw: str
    status: str
    error: str | None
    ack: str | None
    resources: list[str] | None
    attempts: int
    duplicate: bool = False  # True when receive() found this (sender, control id) already stored
    processed_at: datetime | None = None

    @property
    def acks(self) -> list[str]:
        return [a for a in (self.ack or "").split(ACK_SEPARATOR) if a]


def _row(row: Any, duplicate: bool = False) -> StoredMessage:
    return StoredMessage(row.pk, row.sender, row.control_id, row.message_type, row.version, row.received_at,
                         row.raw, row.status, row.error, row.ack, row.resources, row.attempts, duplicate,
                         row.processed_at)


def finish_statement(pk: int, *, status: str, ack: str | None, error: str | None = None,
                     resources: Sequence[str] | None = None, expect_attempts: int | None = None) -> Update:
    """The UPDATE recording a message's outcome; run alone (``finish``) or inside the FHIR transaction
    that applied the message, so the outcome and the resources commit together."""
    stmt = update(HL7_MESSAGE).where(HL7_MESSAGE.c.pk == pk)
    if expect_attempts is not None:
        stmt = stmt.where(HL7_MESSAGE.c.attempts == expect_attempts)
    return stmt.values(status=status, ack=ack, error=error, resources=list(resources) if resources is not None
                       else None, processed_at=datetime.now(UTC), attempts=HL7_MESSAGE.c.attempts + 1)


class MessageStore:
    """Blocking calls (the listener runs them in an executor); each commits before it returns."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _write(self) -> Any:
        # SQLite: BEGIN IMMEDIATE (see storage/database.py), like every other writer.
        return self.engine.connect().execution_options(fhir_write=True)

    def receive(self, *, sender: str, control_id: str | None, message_type: str, version: str, raw: str,
                status: str = RECEIVED, error: str | None = None, ack: str | None = None,
                received_at: datetime | None = None) -> StoredMessage:
        """Insert and commit; a (sender, control id) seen before returns the stored row with duplicate=True."""
        values: dict[str, Any] = {"sender": sender[:255], "control_id": control_id[:199] if control_id else None,
                  "message_type": message_type[:32], "version": version[:16],
                  "received_at": received_at or datetime.now(UTC), "raw": raw.replace("\x00", ""),
                  "status": status, "error": error, "ack": ack, "attempts": 0}
        try:
            with self._write() as conn, conn.begin():
                pk = conn.execute(HL7_MESSAGE.insert().returning(HL7_MESSAGE.c.pk), values).scalar_one()
        except IntegrityError:
            existing = self.find(sender[:255], control_id[:199] if control_id else None)
            if existing is None:
                raise
            return existing
        return StoredMessage(pk, values["sender"], values["control_id"], message_type, version,
                             values["received_at"], values["raw"], status, error, ack, None, 0)

    def find(self, sender: str, control_id: str | None) -> StoredMessage | None:
        if control_id is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(HL7_MESSAGE).where(HL7_MESSAGE.c.sender == sender,
                                                         HL7_MESSAGE.c.control_id == control_id)).first()
        return _row(row, duplicate=True) if row else None

    def get(self, pk: int) -> StoredMessage | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(HL7_MESSAGE).where(HL7_MESSAGE.c.pk == pk)).first()
        return _row(row) if row else None

    def finish(self, pk: int, *, status: str, ack: str | None, error: str | None = None,
               resources: Sequence[str] | None = None, expect_attempts: int | None = None) -> bool:
        """Record the outcome and commit. ``expect_attempts``: only if no other run has recorded one since
        (the row's attempts are still that many); False when another copy's outcome got there first."""
        with self._write() as conn, conn.begin():
            return bool(conn.execute(finish_statement(pk, status=status, ack=ack, error=error, resources=resources,
                                                      expect_attempts=expect_attempts)).rowcount)

    def set_ack(self, pk: int, ack: str) -> None:
        with self._write() as conn, conn.begin():
            conn.execute(update(HL7_MESSAGE).where(HL7_MESSAGE.c.pk == pk).values(ack=ack))

    def with_status(self, status: str, limit: int = 1000, after_pk: int = 0) -> list[StoredMessage]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(HL7_MESSAGE).where(HL7_MESSAGE.c.status == status,
                                                          HL7_MESSAGE.c.pk > after_pk)
                                .order_by(HL7_MESSAGE.c.pk).limit(limit)).all()
        return [_row(r) for r in rows]

    def recent(self, statuses: Sequence[str], limit: int = 20) -> list[StoredMessage]:
        """The newest messages in these statuses (operators' view of what failed lately)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(HL7_MESSAGE).where(HL7_MESSAGE.c.status.in_(list(statuses)))
                                .order_by(HL7_MESSAGE.c.pk.desc()).limit(limit)).all()
        return [_row(r) for r in rows]

    def page(self, status: str | None, limit: int, before_pk: int | None = None) -> list[StoredMessage]:
        """Newest first, optionally of one status, older than ``before_pk`` (a cursor: pages never shift)."""
        stmt = select(HL7_MESSAGE)
        if status is not None:
            stmt = stmt.where(HL7_MESSAGE.c.status == status)
        if before_pk is not None:
            stmt = stmt.where(HL7_MESSAGE.c.pk < before_pk)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(HL7_MESSAGE.c.pk.desc()).limit(limit)).all()
        return [_row(r) for r in rows]

    def warnings(self, limit: int = 20) -> tuple[int, list[StoredMessage]]:
        """Processed messages that carry a warning (e.g. a reused control id): how many, and the newest."""
        where = (HL7_MESSAGE.c.status == PROCESSED) & HL7_MESSAGE.c.error.is_not(None)
        with self.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(HL7_MESSAGE).where(where)).scalar_one())
            rows = conn.execute(select(HL7_MESSAGE).where(where).order_by(HL7_MESSAGE.c.pk.desc())
                                .limit(limit)).all()
        return total, [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(HL7_MESSAGE.c.status, func.count()).group_by(HL7_MESSAGE.c.status)).all()
        return {status: int(n) for status, n in rows}

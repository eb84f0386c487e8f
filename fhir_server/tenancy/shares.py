"""Patient shares between hospitals (issue 13 item 6): the platform's record of who shared which patient
with whom, how, until when, and where the share stands. Status changes are compare-and-set, so two admins
answering at once cannot both win.

This row is the share: access is decided from it alone (api/shared_access.py). The Consent each hospital
keeps of it follows it. Every change of the row commits together with an outbox row (``SHARE_TOPIC``) in
the default tenant's outbox, which lives in the same database as the platform's tables (PostgreSQL: the
same database; SQLite: the default file): whatever fails after that commit, the Consents are brought in
line by the outbox's at-least-once delivery (tenancy/sharing.py ``project``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Engine, Index, String, Table, insert, select, update
from sqlalchemy.engine import Connection

from fhir_server.storage.models import OUTBOX, UTCDateTime
from fhir_server.tenancy.tables import platform_engine, platform_metadata

# The roles of a receiving hospital who may use a share (everyone else there: refused).
CLINICAL_ROLES = frozenset({"doctor", "nurse"})
# The roles of the sharing hospital who may share and revoke.
SHARING_ROLES = frozenset({"admin", "doctor"})
MODES = {"read": "rs", "read-write": "cruds"}  # SMART letters a share grants at most
SHARE_TOPIC = "patient-share"  # outbox: bring both hospitals' Consents in line with the share's row

patient_share_table = Table(
    "patient_share", platform_metadata,
    Column("id", String(64), primary_key=True),
    Column("source", String(40), nullable=False),
    Column("patient", String(64), nullable=False),
    Column("target", String(40), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("expires", UTCDateTime(), nullable=False),
    Column("reason", String(1000), nullable=False),
    Column("status", String(16), nullable=False),
    Column("source_consent", String(64), nullable=False),
    Column("target_consent", String(64), nullable=False),
    Column("created", UTCDateTime(), nullable=False),
    Column("updated", UTCDateTime(), nullable=False),
    Index("ix_patient_share_pair", "source", "target", "status"),
    Index("ix_patient_share_target", "target", "status"),
)


class ShareStatus(StrEnum):
    PROPOSED = "PROPOSED"
    ACTIVE = "ACTIVE"
    REJECTED = "REJECTED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"  # shown, never stored: a share past its expiry, whatever its row says


@dataclass(frozen=True)
class Share:
    id: str
    source: str
    patient: str
    target: str
    mode: str
    expires: datetime
    reason: str
    stored_status: ShareStatus
    source_consent: str
    target_consent: str
    created: datetime
    updated: datetime

    def status(self, now: datetime | None = None) -> ShareStatus:
        live = self.stored_status in (ShareStatus.PROPOSED, ShareStatus.ACTIVE)
        if live and self.expires <= (now or datetime.now(UTC)):
            return ShareStatus.EXPIRED
        return self.stored_status

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "patient": self.patient, "target": self.target,
                "mode": self.mode, "expires": self.expires.isoformat(), "reason": self.reason,
                "status": self.status().value, "sourceConsent": self.source_consent,
                "targetConsent": self.target_consent, "created": self.created.isoformat(),
                "updated": self.updated.isoformat()}


def _share(row: Any) -> Share:
    return Share(row.id, row.source, row.patient, row.target, row.mode, row.expires, row.reason,
                 ShareStatus(row.status), row.source_consent, row.target_consent, row.created, row.updated)


class ShareStore:
    def __init__(self, engine: Engine) -> None:
        """``engine``: the default tenant's (the platform's tables live beside it)."""
        self.engine = platform_engine(engine)

    def add(self, share: Share, base: str) -> None:
        """``base``: the sharing hospital's FHIR base URL (the receiving one's Consent names the patient by it)."""
        row = {c.name: getattr(share, c.name) for c in patient_share_table.c if c.name != "status"}
        with self.engine.begin() as conn:
            conn.execute(insert(patient_share_table).values(**row, status=share.stored_status.value))
            _follow_later(conn, share.id, base)

    def get(self, share_id: str) -> Share | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(patient_share_table).where(patient_share_table.c.id == share_id)).first()
        return _share(row) if row is not None else None

    def by_consent(self, tenant: str, consent_id: str) -> Share | None:
        """The share a tenant's Consent stands for (as the sharing or the receiving hospital)."""
        t = patient_share_table.c
        query = select(patient_share_table).where(
            ((t.source == tenant) & (t.source_consent == consent_id))
            | ((t.target == tenant) & (t.target_consent == consent_id)))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _share(row) if row is not None else None

    def live(self, source: str, patient: str, target: str) -> list[Share]:
        """Proposed or active, unexpired shares of one patient with one hospital."""
        t = patient_share_table.c
        query = select(patient_share_table).where(
            t.source == source, t.patient == patient, t.target == target,
            t.status.in_([ShareStatus.PROPOSED.value, ShareStatus.ACTIVE.value]),
            t.expires > datetime.now(UTC))
        with self.engine.connect() as conn:
            return [_share(r) for r in conn.execute(query)]

    def active(self, source: str, target: str) -> list[Share]:
        """What ``target``'s users may see of ``source`` now: read at every request, so a revocation or an
        expiry holds from the next request on."""
        t = patient_share_table.c
        query = select(patient_share_table).where(
            t.source == source, t.target == target, t.status == ShareStatus.ACTIVE.value,
            t.expires > datetime.now(UTC)).order_by(t.created.desc())
        with self.engine.connect() as conn:
            return [_share(r) for r in conn.execute(query)]

    def listed(self, tenant: str, direction: str) -> list[Share]:
        t = patient_share_table.c
        column = t.source if direction == "sent" else t.target
        with self.engine.connect() as conn:
            return [_share(r) for r in conn.execute(
                select(patient_share_table).where(column == tenant).order_by(t.created.desc()))]

    def move(self, share_id: str, from_: ShareStatus, to: ShareStatus, base: str, *,
             unexpired: bool = True) -> bool:
        """Compare-and-set: False when the share was no longer ``from_`` (or had expired, when asked).
        ``base``: the sharing hospital's FHIR base URL."""
        t = patient_share_table.c
        now = datetime.now(UTC)
        where = [t.id == share_id, t.status == from_.value] + ([t.expires > now] if unexpired else [])
        with self.engine.begin() as conn:
            done = conn.execute(update(patient_share_table).where(*where).values(status=to.value, updated=now))
            if done.rowcount == 1:
                _follow_later(conn, share_id, base)
        return done.rowcount == 1


def _follow_later(conn: Connection, share_id: str, base: str) -> None:
    """The Consents' catch-up, committed with the change (the default tenant's outbox: the same database)."""
    now = datetime.now(UTC)
    conn.execute(insert(OUTBOX).values(topic=SHARE_TOPIC, key=share_id, payload={"share": share_id, "base": base},
                                       status="pending", attempts=0, max_attempts=20, next_attempt_at=now,
                                       created_at=now))

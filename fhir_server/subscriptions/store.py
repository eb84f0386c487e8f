"""Reads of the subscription tables (events, counters) and the websocket binding tokens."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, insert, select

from fhir_server.auth.stored import StoredAccess, dump_access, load_access
from fhir_server.storage.repository import AccessPolicy
from fhir_server.subscriptions.bundles import Event
from fhir_server.subscriptions.tables import EVENT, STATE, WS_TOKEN


def events_since_start(conn: Connection, subscription_id: str) -> int:
    value = conn.execute(select(STATE.c.events).where(STATE.c.subscription_id == subscription_id)).scalar()
    return int(value or 0)


def events(conn: Connection, subscription_id: str, since: int | None = None, until: int | None = None,
           limit: int = 1000) -> list[Event]:
    stmt = select(EVENT).where(EVENT.c.subscription_id == subscription_id)
    if since is not None:
        stmt = stmt.where(EVENT.c.event_number >= since)
    if until is not None:
        stmt = stmt.where(EVENT.c.event_number <= until)
    rows = conn.execute(stmt.order_by(EVENT.c.event_number).limit(limit))
    return [Event(r.event_number, r.timestamp, r.focus, r.interaction) for r in rows]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_ws_token(conn: Connection, subscription_id: str, ttl: timedelta,
                   access: AccessPolicy) -> tuple[str, datetime]:
    """``access``: whoever asks for the token; whoever binds with it is told only what that caller may read."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    conn.execute(delete(WS_TOKEN).where(WS_TOKEN.c.expires_at < now))
    conn.execute(insert(WS_TOKEN).values(token_hash=_hash(token), subscription_id=subscription_id,
                                         expires_at=now + ttl, access=dump_access(access)))
    return token, now + ttl


def resolve_ws_token(conn: Connection, token: str) -> tuple[str, StoredAccess] | None:
    """(subscription id, the access of who asked for the token), or None for an unknown or expired one."""
    row = conn.execute(select(WS_TOKEN.c.subscription_id, WS_TOKEN.c.expires_at, WS_TOKEN.c.access)
                       .where(WS_TOKEN.c.token_hash == _hash(token))).first()
    if row is None or row.expires_at < datetime.now(UTC):
        return None
    return str(row.subscription_id), load_access(row.access)

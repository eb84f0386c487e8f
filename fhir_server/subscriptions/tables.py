"""Subscription bookkeeping (migration 0010), on the storage metadata.

- ``subscription_state``: one row per Subscription: the event counter (backport
  ``events-since-subscription-start``, incremented in each triggering change's own transaction, so numbers
  never skip or repeat), the author's access (a subscriber is told only what they may read) and the FHIR
  base URL it was written through (absolute URLs in its notifications without FHIR_BASE_URL), and whether
  its channel is live (``activated``: a handshake once succeeded) and verified (the current channel's did).
- ``subscription_event``: every event, written with the change: ``$events`` and the websocket channel read it.
- ``subscription_generation``: generation tokens (now ``fhir_server/storage/generation.py``, shared with the
  terminology cache): row 1 is replaced on every Subscription write, so each process knows when its cache of
  active subscriptions is stale (one primary-key read per write instead of reloading them).
- ``subscription_ws_token``: websocket binding tokens (``$get-ws-binding-token``), stored as SHA-256, with
  the access of who asked for one.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, String, Table
from sqlalchemy.dialects.postgresql import JSONB

from fhir_server.storage.generation import GENERATION  # noqa: F401 (its table, kept importable here)
from fhir_server.storage.models import Base, UTCDateTime

Json = JSON().with_variant(JSONB(), "postgresql")

STATE = Table(
    "subscription_state", Base.metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("events", BigInteger, nullable=False, default=0),
    Column("author", Json),  # the author's access (auth/stored.py); null: none
    # Set once a handshake succeeded: an ``error`` subscription keeps queueing only if it was ever active.
    Column("activated", Boolean, nullable=False, default=False),
    # The FHIR base URL the subscription was last written through (migration 0015): rest-hook notifications
    # carry absolute URLs with it when FHIR_BASE_URL is unset. Null: none known.
    Column("base_url", String(2000)),
    # The current channel's handshake succeeded (websocket: needs none); false while a new or changed channel
    # awaits its handshake or after that failed (migration 0020): its notifications wait as ``held`` outbox
    # rows, released when a handshake succeeds (issue 21 item 1).
    Column("verified", Boolean, nullable=False, default=False),
)

EVENT = Table(
    "subscription_event", Base.metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("event_number", BigInteger, primary_key=True),
    Column("timestamp", UTCDateTime(), nullable=False),
    Column("focus", String(200), nullable=False),  # Type/id/_history/version
    Column("interaction", String(16), nullable=False),  # create | update | delete
)

WS_TOKEN = Table(
    "subscription_ws_token", Base.metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("subscription_id", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    # The access of who asked for the token (auth/stored.py; migration 0014_access): what the socket may be told.
    Column("access", Json),
)

"""``claims_api_call`` (migration 0025_claims): every ``x-hcx-api_call_id`` we accepted, whatever exchange it
came on. Its primary key makes "never seen" hold across all exchanges and all processes: a second message
with the same id is refused (ERR_INVALID_API_CALL_ID) unless it is the very same message again on its own
cycle (a duplicate, which changes nothing)."""

from __future__ import annotations

from sqlalchemy import Column, String, Table

from fhir_server.storage.models import Base, UTCDateTime

API_CALL = Table(
    "claims_api_call", Base.metadata,
    Column("api_call_id", String(64), primary_key=True),
    Column("correlation_id", String(64), nullable=False),
    Column("path", String(64), nullable=False),
    Column("received", UTCDateTime(), nullable=False),
)

"""The platform's own tables, shared by every tenant: which tenants exist, and HL7 v2 routes to them.

On PostgreSQL they live in the ``fhir_platform`` schema; on SQLite in the default database file (the
schema name is translated away there, ``PLATFORM_OPTIONS``).
"""

from __future__ import annotations

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table

from fhir_server.storage.models import UTCDateTime
from fhir_server.tenancy.model import PLATFORM_SCHEMA

platform_metadata = MetaData(schema=PLATFORM_SCHEMA)

tenant_table = Table(
    "tenant", platform_metadata,
    Column("code", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("max_users", Integer),
    Column("max_patients", Integer),
    Column("created", UTCDateTime(), nullable=False),
)

# HL7 v2 routing: a message whose MSH-6 (receiving facility), and MSH-5 when set here, match goes to the tenant.
hl7_route_table = Table(
    "hl7_route", platform_metadata,
    Column("facility", String(200), primary_key=True),
    Column("application", String(200), primary_key=True, default=""),  # "" matches any MSH-5
    Column("tenant", String(40), nullable=False),
)


def platform_engine(engine: Engine) -> Engine:
    """``engine`` with the platform schema addressed the way its dialect stores it."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(schema_translate_map={PLATFORM_SCHEMA: None})
    return engine

"""Tenancy (issue 13): the platform's tables (tenants, HL7 v2 routes), once, beside the default tenant.

A tenant's own schema or file is migrated by the same revisions; this one creates nothing there.

Revision ID: 0016_tenancy
Revises: 0015_subscription_base
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import UTCDateTime

revision = "0016_tenancy"
down_revision = "0015_subscription_base"
branch_labels = None
depends_on = None

PLATFORM = "fhir_platform"


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else PLATFORM


def _platform_run() -> bool:
    return op.get_context().config.attributes.get("tenant") is None  # set when migrating a tenant


def upgrade() -> None:
    if not _platform_run():
        return
    schema = _schema()
    if schema is not None:
        op.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    op.create_table(
        "tenant",
        sa.Column("code", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("max_users", sa.Integer()),
        sa.Column("max_patients", sa.Integer()),
        sa.Column("created", UTCDateTime(), nullable=False),
        schema=schema,
    )
    op.create_table(
        "hl7_route",
        sa.Column("facility", sa.String(200), primary_key=True),
        sa.Column("application", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(40), nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    if not _platform_run():
        return
    schema = _schema()
    op.drop_table("hl7_route", schema=schema)
    op.drop_table("tenant", schema=schema)

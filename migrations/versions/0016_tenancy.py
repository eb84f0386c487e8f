"""Tenancy (issue 13): the platform's tables (tenants, HL7 v2 routes), once, beside the default tenant.

A tenant's own schema or file is migrated by the same revisions; this one creates nothing there.

Revision ID: 0016_tenancy
Revises: 0015_subscription_base
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import UTCDateTime
from migrations.platform import platform_run, platform_schema

revision = "0016_tenancy"
down_revision = "0015_subscription_base"
branch_labels = None
depends_on = None



def upgrade() -> None:
    if not platform_run():
        return
    schema = platform_schema()
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
    if not platform_run():
        return
    schema = platform_schema()
    op.drop_table("hl7_route", schema=schema)
    op.drop_table("tenant", schema=schema)

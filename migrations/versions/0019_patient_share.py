"""Tenancy (issue 13 item 6): ``patient_share``, a patient of one hospital shared with another, on the
platform (it is between tenants, so it belongs to neither). Created only on the platform run.

Revision ID: 0019_patient_share
Revises: 0018_frontdesk
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import UTCDateTime
from migrations.platform import platform_run, platform_schema

revision = "0019_patient_share"
down_revision = "0018_frontdesk"
branch_labels = None
depends_on = None



def upgrade() -> None:
    if not platform_run():
        return
    schema = platform_schema()
    op.create_table(
        "patient_share",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("patient", sa.String(64), nullable=False),
        sa.Column("target", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source_consent", sa.String(64), nullable=False),
        sa.Column("target_consent", sa.String(64), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("updated", UTCDateTime(), nullable=False),
        schema=schema,
    )
    op.create_index("ix_patient_share_pair", "patient_share", ["source", "target", "status"], schema=schema)
    op.create_index("ix_patient_share_target", "patient_share", ["target", "status"], schema=schema)


def downgrade() -> None:
    if not platform_run():
        return
    schema = platform_schema()
    op.drop_index("ix_patient_share_target", "patient_share", schema=schema)
    op.drop_index("ix_patient_share_pair", "patient_share", schema=schema)
    op.drop_table("patient_share", schema=schema)

"""Bulk data jobs ($export / $import): fhir_server/jobs/tables.py.

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import JsonDoc, UTCDateTime

revision = "0009"
down_revision = "0005"
branch_labels = None
depends_on = None

Json = JsonDoc
Stamp = UTCDateTime()


def upgrade() -> None:
    op.create_table(
        "bulk_job",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("params", Json, nullable=False),
        sa.Column("access", Json, nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("transaction_time", Stamp, nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_until", Stamp, nullable=True),
        sa.Column("progress", Json, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("expires_at", Stamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bulk_job"),
    )
    op.create_index("ix_bulk_job_status_lease", "bulk_job", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_bulk_job_status_lease", table_name="bulk_job")
    op.drop_table("bulk_job")

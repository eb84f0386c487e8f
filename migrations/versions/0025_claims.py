"""Claims (issue 15): ``claims_api_call``, the api_call_ids of every HCX message accepted, unique across all
exchanges (interfaces/claims/tables.py). In each tenant's schema or file.

Revision ID: 0025_claims
Revises: 0021_outbox_lease
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import UTCDateTime

revision = "0025_claims"
down_revision = "0021_outbox_lease"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("claims_api_call",
                    sa.Column("api_call_id", sa.String(64), primary_key=True),
                    sa.Column("correlation_id", sa.String(64), nullable=False),
                    sa.Column("path", sa.String(64), nullable=False),
                    sa.Column("received", UTCDateTime(), nullable=False))


def downgrade() -> None:
    op.drop_table("claims_api_call")

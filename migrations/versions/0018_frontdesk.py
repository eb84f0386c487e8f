"""The front desk's index and lock tables (issue 17 items 1-3): the MRN day counter, unique patient identifiers
and the master patient index's blocking keys (fhir_server/workflows/frontdesk/tables.py).

Revision ID: 0018_frontdesk
Revises: 0017_billing
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0018_frontdesk"
down_revision = "0017_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("frontdesk_mrn_day",
                    sa.Column("day", sa.String(8), primary_key=True),
                    sa.Column("last", sa.Integer, nullable=False))
    op.create_table("frontdesk_identifier",
                    sa.Column("system", sa.Text, nullable=False),
                    sa.Column("value", sa.Text, nullable=False),
                    sa.Column("patient_id", sa.String(64), nullable=False),
                    sa.PrimaryKeyConstraint("system", "value", name="pk_frontdesk_identifier"))
    op.create_index("ix_frontdesk_identifier_patient", "frontdesk_identifier", ["patient_id"])
    op.create_table("frontdesk_match_key",
                    sa.Column("key", sa.String(200), nullable=False),
                    sa.Column("patient_id", sa.String(64), nullable=False),
                    sa.PrimaryKeyConstraint("key", "patient_id", name="pk_frontdesk_match_key"))
    op.create_index("ix_frontdesk_match_key_patient", "frontdesk_match_key", ["patient_id"])


def downgrade() -> None:
    op.drop_table("frontdesk_match_key")
    op.drop_table("frontdesk_identifier")
    op.drop_table("frontdesk_mrn_day")

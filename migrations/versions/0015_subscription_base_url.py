"""A Subscription keeps the FHIR base URL it was written through (issue 21 item 5): rest-hook
notifications carry absolute fullUrls and references with it when FHIR_BASE_URL is unset.

Revision ID: 0015_subscription_base
Revises: 0014_access
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_subscription_base"
down_revision = "0014_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("subscription_state", sa.Column("base_url", sa.String(2000)))


def downgrade() -> None:
    op.drop_column("subscription_state", "base_url")

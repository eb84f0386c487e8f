"""Join the feature branches that grew in parallel off 0005 (search full text, composites, auth limits, bulk
jobs, subscriptions, canonical resources) into one head; no schema change.

Revision ID: 0012
Revises: 0006, 0007, 0008, 0009, 0010, 0011
Create Date: 2026-12-01
"""

revision = "0012"
down_revision = ("0006", "0007", "0008", "0009", "0010", "0011")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""Rate-limit counters shared by every server process, and the resource-server flag of clients (RFC 7662
introspection of other clients' tokens) — fhir_server/auth/tables.py.

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_rate_limit",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("window", sa.Integer(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window", name="pk_auth_rate_limit"),
    )
    op.create_index("ix_auth_rate_limit_window", "auth_rate_limit", ["window"])
    with op.batch_alter_table("auth_client") as batch:
        batch.add_column(sa.Column("resource_server", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("auth_client") as batch:
        batch.drop_column("resource_server")
    op.drop_index("ix_auth_rate_limit_window", "auth_rate_limit")
    op.drop_table("auth_rate_limit")

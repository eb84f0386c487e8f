"""Composite search index (fhir_server/search/composite_table.py): component values per element.

Resources written before this migration have no composite rows until they are written again or reindexed
(``$reindex``); composite searches do not match them meanwhile.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import BigId, UTCDateTime

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "search_composite",
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        sa.Column("elem", sa.Integer(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("sub", sa.String(120), nullable=False),
        sa.Column("hash_value", sa.BigInteger()),
        sa.Column("hash_sys_value", sa.BigInteger()),
        sa.Column("hash_sys", sa.BigInteger()),
        sa.Column("value_norm", sa.String(255)),
        sa.Column("low", UTCDateTime()),
        sa.Column("high", UTCDateTime()),
        sa.Column("value", sa.Float()),
        sa.Column("system", sa.Text()),
        sa.Column("code", sa.Text()),
        sa.Column("unit", sa.Text()),
        sa.Column("target_type", sa.String(64)),
        sa.Column("target_id", sa.String(64)),
        sa.Column("target_url", sa.Text()),
        sa.PrimaryKeyConstraint("pk", name="pk_search_composite"),
    )
    op.create_index("ix_search_composite_res", "search_composite", ["resource_type", "resource_id"])
    op.create_index("ix_search_composite_elem", "search_composite", ["resource_id", "param", "elem"])
    op.create_index("ix_search_composite_sys_value", "search_composite", ["hash_sys_value"])
    op.create_index("ix_search_composite_value", "search_composite", ["hash_value"])
    op.create_index("ix_search_composite_number", "search_composite", ["resource_type", "param", "part", "value"])


def downgrade() -> None:
    op.drop_table("search_composite")

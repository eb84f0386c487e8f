"""Terminology concept storage (terminology/tables.py): code systems, concepts, is-a transitive closure.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "terminology_code_system",
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("concept_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", name="pk_terminology_code_system"),
    )
    op.create_index("ix_terminology_code_system_url", "terminology_code_system", ["url", "version"])
    op.create_table(
        "terminology_concept",
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("code", sa.String(255), nullable=False),
        sa.Column("display", sa.Text()),
        sa.Column("definition", sa.Text()),
        sa.Column("designations", Json),
        sa.Column("properties", Json),
        sa.Column("parents", Json),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", "code", name="pk_terminology_concept"),
    )
    op.create_index("ix_terminology_concept_seq", "terminology_concept", ["resource_id", "seq"])
    op.create_table(
        "terminology_closure",
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("ancestor", sa.String(255), nullable=False),
        sa.Column("descendant", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", "ancestor", "descendant", name="pk_terminology_closure"),
    )
    op.create_index("ix_terminology_closure_descendant", "terminology_closure", ["resource_id", "descendant"])


def downgrade() -> None:
    op.drop_table("terminology_closure")
    op.drop_table("terminology_concept")
    op.drop_table("terminology_code_system")

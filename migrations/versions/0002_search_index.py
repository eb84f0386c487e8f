"""Search index tables: one per search parameter type (see fhir_server/search/tables.py).

Resources written before this migration have no index rows until they are written again or reindexed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import BigId, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _table(name: str, *columns: sa.Column) -> None:  # type: ignore[type-arg]
    op.create_table(
        name,
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("pk", name=f"pk_{name}"),
    )
    op.create_index(f"ix_{name}_res", name, ["resource_type", "resource_id"])


def upgrade() -> None:
    _table("search_string",
           sa.Column("value_norm", sa.String(255), nullable=False),
           sa.Column("value_exact", sa.Text(), nullable=False),
           sa.Column("hash_exact", sa.BigInteger(), nullable=False))
    op.create_index("ix_search_string_norm", "search_string", ["resource_type", "param", "value_norm"],
                    postgresql_ops={"value_norm": "varchar_pattern_ops"})
    op.create_index("ix_search_string_exact", "search_string", ["hash_exact", "resource_id"])

    _table("search_token",
           sa.Column("system", sa.Text(), nullable=True),
           sa.Column("code", sa.Text(), nullable=True),
           sa.Column("text_norm", sa.String(255), nullable=True),
           sa.Column("hash_value", sa.BigInteger(), nullable=False),
           sa.Column("hash_sys_value", sa.BigInteger(), nullable=False),
           sa.Column("hash_sys", sa.BigInteger(), nullable=False))
    op.create_index("ix_search_token_value", "search_token", ["hash_value", "resource_id"])
    op.create_index("ix_search_token_sys_value", "search_token", ["hash_sys_value", "resource_id"])
    op.create_index("ix_search_token_sys", "search_token", ["hash_sys", "resource_id"])

    _table("search_reference",
           sa.Column("target_type", sa.String(64), nullable=True),
           sa.Column("target_id", sa.String(64), nullable=True),
           sa.Column("target_url", sa.Text(), nullable=True))
    op.create_index("ix_search_reference_target", "search_reference",
                    ["target_id", "target_type", "resource_type", "param", "resource_id"])

    _table("search_date",
           sa.Column("low", UTCDateTime(), nullable=False),
           sa.Column("high", UTCDateTime(), nullable=False))
    op.create_index("ix_search_date_low", "search_date", ["resource_type", "param", "low", "high"])
    op.create_index("ix_search_date_high", "search_date", ["resource_type", "param", "high"])

    _table("search_number", sa.Column("value", sa.Float(), nullable=False))
    op.create_index("ix_search_number_value", "search_number", ["resource_type", "param", "value"])

    _table("search_quantity",
           sa.Column("value", sa.Float(), nullable=False),
           sa.Column("system", sa.Text(), nullable=True),
           sa.Column("code", sa.Text(), nullable=True),
           sa.Column("unit", sa.Text(), nullable=True))
    op.create_index("ix_search_quantity_value", "search_quantity", ["resource_type", "param", "value"])

    _table("search_uri",
           sa.Column("value", sa.Text(), nullable=False),
           sa.Column("hash_uri", sa.BigInteger(), nullable=False))
    op.create_index("ix_search_uri_hash", "search_uri", ["hash_uri", "resource_id"])


def downgrade() -> None:
    for name in ("search_uri", "search_quantity", "search_number", "search_date", "search_reference",
                 "search_token", "search_string"):
        op.drop_table(name)

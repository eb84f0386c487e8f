"""Drop the index rows of Observation's ``combo-*`` parameters: they are unions of other parameters
(``combo-code`` = ``code`` | ``component-code``) and are now searched through those parameters' rows
(search/registry.py ``find_unions``), so nothing reads them and new writes no longer make them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLES = ("search_token", "search_quantity", "search_composite")


def upgrade() -> None:
    for table in TABLES:
        op.execute(sa.text(f"DELETE FROM {table} WHERE resource_type = 'Observation' AND param LIKE 'combo-%'"))


def downgrade() -> None:
    pass  # an older server would search combo-* without rows: run $reindex after downgrading

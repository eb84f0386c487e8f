"""Drop the index rows of Observation's ``combo-*`` parameters and of its ``code-value-concept``,
``code-value-date`` and ``code-value-quantity`` composites. The first are unions of other parameters
(``combo-code`` = ``code`` | ``component-code``), the others composites on the resource itself (its code and
its value: the ``code`` and ``value-*`` criteria ANDed); both are now searched through those parameters'
rows (search/registry.py ``find_unions``, ``find_conjunctions``), so nothing reads them and new writes no
longer make them.

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


CONJUNCTIONS = "('code-value-concept', 'code-value-date', 'code-value-quantity')"


def upgrade() -> None:
    for table in TABLES:
        op.execute(sa.text(f"DELETE FROM {table} WHERE resource_type = 'Observation' AND param LIKE 'combo-%'"))
    op.execute(sa.text(f"DELETE FROM search_composite WHERE resource_type = 'Observation' "
                       f"AND param IN {CONJUNCTIONS}"))


def downgrade() -> None:
    pass  # an older server would search combo-* without rows: run $reindex after downgrading

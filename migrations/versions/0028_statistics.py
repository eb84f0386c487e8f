"""Statistics (issue 19 goal 4): autovacuum analyses the searched tables sooner than its default (10% new
rows): at 2% (plus 1,000 rows), so the planner's picture follows a growing hospital. PostgreSQL only.

Revision ID: 0028_statistics
Revises: 0025_claims
Create Date: 2026-12-07
"""

from alembic import op

from fhir_server.storage.statistics import SEARCHED_TABLES

revision = "0028_statistics"
down_revision = "0025_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in SEARCHED_TABLES:
        op.execute(f"ALTER TABLE {table} SET (autovacuum_analyze_scale_factor = 0.02, "
                   "autovacuum_analyze_threshold = 1000)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in SEARCHED_TABLES:
        op.execute(f"ALTER TABLE {table} RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold)")

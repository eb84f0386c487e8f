"""Access is always recorded (issue 12): a websocket binding token keeps the access of who asked for it, and
Subscription authors recorded as null (the full access a request without a token had) say so explicitly,
since a null author now means no access at all (fhir_server/auth/stored.py).

Revision ID: 0014_access
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014_access"
down_revision = "0013"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
LEGACY_AUTHOR = '{"system": "authored with full access before authors were recorded whole (migration 0014_access)"}'


def upgrade() -> None:
    op.add_column("subscription_ws_token", sa.Column("access", Json))
    op.execute(sa.text("DELETE FROM subscription_ws_token"))  # tokens issued without an access: bind again
    # SQL NULL or JSON null (what the JSON type writes for None)
    op.execute(sa.text(f"UPDATE subscription_state SET author = '{LEGACY_AUTHOR}' "
                       "WHERE author IS NULL OR CAST(author AS TEXT) = 'null'"))


def downgrade() -> None:
    op.drop_column("subscription_ws_token", "access")

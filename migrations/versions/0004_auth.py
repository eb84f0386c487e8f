"""SMART authorization tables (fhir_server/auth/tables.py): users, clients, codes, refresh tokens,
signing keys, revoked token ids, client assertion ids, EHR launches.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from fhir_server.storage.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "auth_user",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("username", sa.String(150), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("fhir_user", sa.String(200)),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_auth_user"),
        sa.UniqueConstraint("username", name="uq_auth_user_username"),
    )
    op.create_table(
        "auth_client",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.Text()),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("auth_method", sa.String(40), nullable=False),
        sa.Column("grant_types", Json, nullable=False),
        sa.Column("redirect_uris", Json, nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("jwks", Json),
        sa.Column("jwks_uri", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name="pk_auth_client"),
    )
    op.create_table(
        "auth_code",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(128)),
        sa.Column("code_challenge_method", sa.String(10)),
        sa.Column("context", Json, nullable=False),
        sa.Column("family_id", sa.String(64), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name="pk_auth_code"),
    )
    op.create_table(
        "auth_refresh_token",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("family_id", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64)),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("context", Json, nullable=False),
        sa.Column("rotated_at", UTCDateTime()),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_auth_refresh_token"),
    )
    op.create_index("ix_auth_refresh_token_family_id", "auth_refresh_token", ["family_id"])
    op.create_table(
        "auth_signing_key",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("alg", sa.String(10), nullable=False),
        sa.Column("private_jwk", Json, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("retired_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("kid", name="pk_auth_signing_key"),
    )
    op.create_table(
        "auth_revoked",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_auth_revoked"),
    )
    op.create_table(
        "auth_assertion_jti",
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(255), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name="pk_auth_assertion_jti"),
    )
    op.create_table(
        "auth_launch",
        sa.Column("launch_id", sa.String(64), nullable=False),
        sa.Column("context", Json, nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("launch_id", name="pk_auth_launch"),
    )


def downgrade() -> None:
    for table in ("auth_launch", "auth_assertion_jti", "auth_revoked", "auth_signing_key", "auth_refresh_token",
                  "auth_code", "auth_client", "auth_user"):
        op.drop_table(table)

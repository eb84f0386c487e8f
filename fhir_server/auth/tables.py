"""Authorization tables on the storage metadata (migration 0004): users, clients, codes, tokens, keys.

Secrets never stored in the clear: passwords as argon2 hashes; client secrets, authorization codes and refresh
tokens as SHA-256 digests (they are random 256-bit strings we generate, so a plain digest suffices).
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Index, Integer, String, Table, Text, false
from sqlalchemy.dialects.postgresql import JSONB

from fhir_server.storage.models import Base, UTCDateTime

Json = JSON().with_variant(JSONB(), "postgresql")
META = Base.metadata

AUTH_USER = Table(
    "auth_user", META,
    Column("id", String(64), primary_key=True),
    Column("username", String(150), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(32), nullable=False),
    Column("fhir_user", String(200)),  # e.g. Practitioner/1 or Patient/7
    Column("active", Boolean, nullable=False, default=True),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
)

AUTH_CLIENT = Table(
    "auth_client", META,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_hash", Text),
    Column("public", Boolean, nullable=False),
    Column("auth_method", String(40), nullable=False),  # none | client_secret_basic | private_key_jwt
    Column("grant_types", Json, nullable=False),
    Column("redirect_uris", Json, nullable=False),
    Column("scope", Text, nullable=False),  # the most this client may ever be granted
    Column("jwks", Json),
    Column("jwks_uri", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    # A resource server (an API gateway, another FHIR server) may introspect any token (RFC 7662); other
    # clients only their own tokens (migration 0008).
    Column("resource_server", Boolean, nullable=False, default=False, server_default=false()),
)

AUTH_CODE = Table(
    "auth_code", META,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("code_challenge", String(128)),
    Column("code_challenge_method", String(10)),
    Column("context", Json, nullable=False),  # launch context: patient, encounter, nonce, ...
    Column("family_id", String(64), nullable=False),  # tokens issued from this code (revoked on reuse)
    Column("used", Boolean, nullable=False, default=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

AUTH_REFRESH_TOKEN = Table(
    "auth_refresh_token", META,
    Column("token_hash", String(64), primary_key=True),
    Column("family_id", String(64), nullable=False, index=True),
    Column("client_id", String(64), nullable=False),
    Column("user_id", String(64)),
    Column("scope", Text, nullable=False),
    Column("context", Json, nullable=False),
    Column("rotated_at", UTCDateTime()),  # set when exchanged: a second use is a reuse (theft) signal
    Column("revoked", Boolean, nullable=False, default=False),
    Column("issued_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

AUTH_SIGNING_KEY = Table(
    "auth_signing_key", META,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(10), nullable=False),
    Column("private_jwk", Json, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("retired_at", UTCDateTime()),  # no longer signs; still published until its tokens expire
)

# Access-token ids and refresh-token families revoked before they expire (RFC 7009, reuse detection).
AUTH_REVOKED = Table(
    "auth_revoked", META,
    Column("id", String(128), primary_key=True),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Client assertion ids seen (RFC 7523 jti replay protection), kept until the assertion expires.
AUTH_ASSERTION_JTI = Table(
    "auth_assertion_jti", META,
    Column("issuer", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# EHR launch: an opaque launch id bound to the context the EHR chose (SMART App Launch, EHR launch).
AUTH_LAUNCH = Table(
    "auth_launch", META,
    Column("launch_id", String(64), primary_key=True),
    Column("context", Json, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Requests per (limit, client address) per one-minute window, shared by every server process (migration 0008).
AUTH_RATE_LIMIT = Table(
    "auth_rate_limit", META,
    Column("key", String(200), primary_key=True),
    Column("window", Integer, primary_key=True),  # minutes since the epoch
    Column("hits", Integer, nullable=False),
    Index("ix_auth_rate_limit_window", "window"),
)

AUTH_TABLES = [AUTH_USER, AUTH_CLIENT, AUTH_CODE, AUTH_REFRESH_TOKEN, AUTH_SIGNING_KEY, AUTH_REVOKED,
               AUTH_ASSERTION_JTI, AUTH_LAUNCH, AUTH_RATE_LIMIT]

"""Administering users and clients after they exist (the console's users and clients page): list them,
deactivate a user, reset a password, revoke a client, rotate a client's secret.

Revoking works through ``auth_revoked`` (as token revocation does): ``client:<id>`` ends every token of the
client at once and makes it unknown to the authorization server for good; ``user:<id>`` ends a deactivated
user's access tokens (they expire within the token lifetime anyway; the key is kept that long), and their
refresh tokens are revoked. Nothing is deleted: who had access stays on record.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from fhir_server.auth.store import AuthStore, digest, new_secret, now, writing
from fhir_server.auth.tables import AUTH_CLIENT, AUTH_REFRESH_TOKEN, AUTH_REVOKED, AUTH_USER

FOREVER = datetime(9999, 1, 1, tzinfo=UTC)  # a revoked client stays revoked


@dataclass(frozen=True)
class UserRow:
    id: str
    username: str
    role: str
    fhir_user: str | None
    active: bool
    locked: bool
    created_at: datetime


@dataclass(frozen=True)
class ClientRow:
    client_id: str
    name: str
    auth_method: str
    grant_types: list[str]
    scope: str
    redirect_uris: list[str]
    resource_server: bool
    revoked: bool
    created_at: datetime


def list_users(store: AuthStore, limit: int = 500) -> list[UserRow]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(AUTH_USER).order_by(AUTH_USER.c.username).limit(limit)).all()
    moment = now()
    return [UserRow(r.id, r.username, r.role, r.fhir_user, bool(r.active),
                    r.locked_until is not None and r.locked_until > moment, r.created_at) for r in rows]


def list_clients(store: AuthStore, limit: int = 500) -> list[ClientRow]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(AUTH_CLIENT).order_by(AUTH_CLIENT.c.name).limit(limit)).all()
        revoked = {r.id for r in conn.execute(select(AUTH_REVOKED.c.id).where(AUTH_REVOKED.c.id.like("client:%")))}
    return [ClientRow(r.client_id, r.name, r.auth_method, list(r.grant_types), r.scope, list(r.redirect_uris),
                      bool(r.resource_server), f"client:{r.client_id}" in revoked, r.created_at) for r in rows]


def deactivate_user(store: AuthStore, user_id: str, token_seconds: int) -> bool:
    """The user can no longer sign in; their refresh tokens and access tokens stop working now."""
    with writing(store.engine) as conn:
        done = conn.execute(update(AUTH_USER).where(AUTH_USER.c.id == user_id, AUTH_USER.c.active)
                            .values(active=False)).rowcount
        families = [r.family_id for r in conn.execute(select(AUTH_REFRESH_TOKEN.c.family_id).where(
            AUTH_REFRESH_TOKEN.c.user_id == user_id, AUTH_REFRESH_TOKEN.c.revoked.is_(False)).distinct())]
    if not done:
        return False
    for family in families:
        store.revoke_family(family)
    store.revoke(f"user:{user_id}", now() + timedelta(seconds=token_seconds + 60))
    return True


def new_password() -> str:
    return "Aa1!" + secrets.token_urlsafe(18)  # as the CLI generates them: meets the policy


def reset_password(store: AuthStore, user_id: str) -> str | None:
    """A new generated password (shown once by the caller), the lock lifted; None when no such user."""
    with store.engine.connect() as conn:
        username = conn.execute(select(AUTH_USER.c.username).where(AUTH_USER.c.id == user_id)).scalar()
    if username is None:
        return None
    password = new_password()
    return password if store.set_password(str(username), password) else None


def revoke_client(store: AuthStore, client_id: str) -> bool:
    """Every token of the client stops working and it can never authenticate again; False when unknown
    or revoked already."""
    if store.client_row(client_id) is None or store.any_revoked([f"client:{client_id}"]):
        return False
    store.revoke(f"client:{client_id}", FOREVER)
    with writing(store.engine) as conn:
        conn.execute(update(AUTH_REFRESH_TOKEN).where(AUTH_REFRESH_TOKEN.c.client_id == client_id)
                     .values(revoked=True))
    return True


def rotate_secret(store: AuthStore, client_id: str) -> str | None:
    """A new client secret (the old one stops working now); None for a client without one (public, keys)."""
    if store.any_revoked([f"client:{client_id}"]):
        return None
    secret = new_secret()
    with writing(store.engine) as conn:
        done = conn.execute(update(AUTH_CLIENT).where(AUTH_CLIENT.c.client_id == client_id,
                                                      AUTH_CLIENT.c.auth_method == "client_secret_basic")
                            .values(secret_hash=digest(secret))).rowcount
    return secret if done else None


"""Reads and writes of the authorization tables (each call its own short transaction)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fhir_server.auth.passwords import hash_secret, policy_problems, verify_secret
from fhir_server.auth.roles import ROLES
from fhir_server.auth.tables import (
    AUTH_ASSERTION_JTI,
    AUTH_CLIENT,
    AUTH_CODE,
    AUTH_LAUNCH,
    AUTH_REFRESH_TOKEN,
    AUTH_REVOKED,
    AUTH_USER,
)

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction that takes SQLite's write lock at BEGIN (as the unit of work does): a read-then-
    write transaction started deferred fails at once (SQLITE_BUSY) when another writer got in between."""
    with engine.connect() as conn:
        conn.execution_options(fhir_write=True)
        with conn.begin():
            yield conn


def now() -> datetime:
    return datetime.now(UTC)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class User:
    id: str
    username: str
    role: str
    fhir_user: str | None

    def get_user_id(self) -> str:  # authlib
        return self.id


class UserLimitReached(ValueError):
    """The tenant has as many users as its platform limit allows."""


class AuthStore:
    def __init__(self, engine: Engine, max_users: Callable[[], int | None] | None = None) -> None:
        """``max_users``: the tenant's user limit, asked at each creation (fhir_server/tenancy/limits.py)."""
        self.engine = engine
        self.max_users = max_users

    # --- users -------------------------------------------------------------------------------------------

    def create_user(self, username: str, password: str, role: str, fhir_user: str | None = None) -> User:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
        problems = policy_problems(password)
        if problems:
            raise ValueError("password too weak: needs " + "; ".join(problems))
        user = User(str(uuid.uuid4()), username, role, fhir_user)
        password_hash = hash_secret(password)
        with writing(self.engine) as conn:
            limit = self.max_users() if self.max_users is not None else None
            if limit is not None and conn.execute(select(func.count()).select_from(AUTH_USER)).scalar_one() >= limit:
                raise UserLimitReached(f"this hospital's limit max-users ({limit}) is reached")
            conn.execute(insert(AUTH_USER).values(id=user.id, username=username, password_hash=password_hash,
                                                  role=role, fhir_user=fhir_user, active=True, failed_logins=0,
                                                  created_at=now()))
        return user

    def set_password(self, username: str, password: str) -> bool:
        """A new password (and the lock lifted); False when no such user. The platform's reset of a hospital
        admin's password, through the CLI or /platform."""
        problems = policy_problems(password)
        if problems:
            raise ValueError("password too weak: needs " + "; ".join(problems))
        with writing(self.engine) as conn:
            done = conn.execute(update(AUTH_USER).where(AUTH_USER.c.username == username).values(
                password_hash=hash_secret(password), failed_logins=0, locked_until=None))
        return bool(done.rowcount)

    def count_users(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(AUTH_USER)).scalar_one())

    def has_users(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(AUTH_USER.c.id).limit(1)).first() is not None

    def user(self, user_id: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(AUTH_USER).where(AUTH_USER.c.id == user_id, AUTH_USER.c.active)).first()
        return User(row.id, row.username, row.role, row.fhir_user) if row else None

    def login(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account is neither locked nor inactive.

        Unknown usernames cost the same argon2 verification and give the same answer, so the login page
        cannot tell whether a username exists. Five failures lock the account for 15 minutes.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(AUTH_USER).where(AUTH_USER.c.username == username)).first()
        ok = verify_secret(row.password_hash if row else None, password)  # slow: outside any write lock
        if row is None:
            return None
        locked = row.locked_until is not None and row.locked_until > now()
        if ok and not locked and row.active:
            if row.failed_logins or row.locked_until is not None:
                with writing(self.engine) as conn:
                    conn.execute(update(AUTH_USER).where(AUTH_USER.c.id == row.id).values(failed_logins=0,
                                                                                         locked_until=None))
            return User(row.id, row.username, row.role, row.fhir_user)
        if not ok:
            with writing(self.engine) as conn:  # counted in one statement: concurrent failures all count
                failures = conn.execute(update(AUTH_USER).where(AUTH_USER.c.id == row.id)
                                        .values(failed_logins=AUTH_USER.c.failed_logins + 1)
                                        .returning(AUTH_USER.c.failed_logins)).scalar_one()
                if failures >= MAX_FAILED_LOGINS:
                    conn.execute(update(AUTH_USER).where(AUTH_USER.c.id == row.id)
                                 .values(failed_logins=0, locked_until=now() + LOCKOUT))
        return None

    # --- clients -----------------------------------------------------------------------------------------

    def create_client(self, name: str, grant_types: list[str], scope: str, redirect_uris: list[str],
                      public: bool = False, jwks: dict[str, Any] | None = None,
                      jwks_uri: str | None = None, resource_server: bool = False,
                      client_id: str | None = None) -> dict[str, Any]:
        """``client_id``: a fixed id for the server's own clients (the console's); otherwise a new UUID."""
        client_id = client_id or str(uuid.uuid4())
        secret: str | None = None
        if public:
            method = "none"
        elif jwks is not None or jwks_uri is not None:
            method = "private_key_jwt"
        else:
            method = "client_secret_basic"
            secret = new_secret()
        if public and resource_server:
            raise ValueError("a resource server authenticates: it cannot be a public client")
        if "authorization_code" in grant_types and not redirect_uris:
            raise ValueError("an authorization_code client needs at least one redirect URI")
        if "authorization_code" in grant_types and "refresh_token" not in grant_types:
            grant_types = [*grant_types, "refresh_token"]
        with writing(self.engine) as conn:
            conn.execute(insert(AUTH_CLIENT).values(
                client_id=client_id, name=name, secret_hash=digest(secret) if secret else None, public=public,
                auth_method=method, grant_types=grant_types, redirect_uris=redirect_uris, scope=scope, jwks=jwks,
                jwks_uri=jwks_uri, resource_server=resource_server, created_at=now()))
        out: dict[str, Any] = {"client_id": client_id, "name": name, "token_endpoint_auth_method": method,
                               "grant_types": grant_types, "scope": scope, "redirect_uris": redirect_uris}
        if resource_server:
            out["resource_server"] = True
        if secret:
            out["client_secret"] = secret
        return out

    def client_row(self, client_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(AUTH_CLIENT).where(AUTH_CLIENT.c.client_id == client_id)).first()

    # --- authorization codes -----------------------------------------------------------------------------

    def save_code(self, code: str, values: dict[str, Any], lifetime: int = 60) -> None:
        with writing(self.engine) as conn:
            conn.execute(insert(AUTH_CODE).values(code_hash=digest(code), used=False,
                                                  expires_at=now() + timedelta(seconds=lifetime), **values))

    def claim_code(self, code: str, client_id: str) -> Any:
        """The code's row, marked used in the same statement (single use even under concurrency).

        A second use revokes everything issued from the first (RFC 6749 4.1.2) and returns None.
        """
        key = digest(code)
        with writing(self.engine) as conn:
            claimed = conn.execute(update(AUTH_CODE).where(
                AUTH_CODE.c.code_hash == key, AUTH_CODE.c.client_id == client_id, AUTH_CODE.c.used.is_(False),
                AUTH_CODE.c.expires_at > now()).values(used=True)).rowcount
            row = conn.execute(select(AUTH_CODE).where(AUTH_CODE.c.code_hash == key)).first()
        if claimed == 1:
            return row
        if row is not None and row.used:
            self.revoke_family(row.family_id)
        return None

    # --- refresh tokens ----------------------------------------------------------------------------------

    def save_refresh(self, token: str, family_id: str, client_id: str, user_id: str | None, scope: str,
                     context: dict[str, Any], days: int) -> None:
        with writing(self.engine) as conn:
            conn.execute(insert(AUTH_REFRESH_TOKEN).values(
                token_hash=digest(token), family_id=family_id, client_id=client_id, user_id=user_id, scope=scope,
                context=context, revoked=False, issued_at=now(), expires_at=now() + timedelta(days=days)))

    def refresh_row(self, token: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(AUTH_REFRESH_TOKEN).where(
                AUTH_REFRESH_TOKEN.c.token_hash == digest(token))).first()

    def rotate_refresh(self, token: str) -> Any:
        """Mark a refresh token exchanged; a token exchanged before is reuse: the whole family is revoked."""
        key = digest(token)
        with writing(self.engine) as conn:
            claimed = conn.execute(update(AUTH_REFRESH_TOKEN).where(
                AUTH_REFRESH_TOKEN.c.token_hash == key, AUTH_REFRESH_TOKEN.c.rotated_at.is_(None),
                AUTH_REFRESH_TOKEN.c.revoked.is_(False), AUTH_REFRESH_TOKEN.c.expires_at > now()
            ).values(rotated_at=now())).rowcount
            row = conn.execute(select(AUTH_REFRESH_TOKEN).where(AUTH_REFRESH_TOKEN.c.token_hash == key)).first()
        if claimed == 1:
            return row
        if row is not None and row.rotated_at is not None:
            self.revoke_family(row.family_id)
        return None

    def revoke_family(self, family_id: str, days: int = 31) -> None:
        """Revoke every refresh token of a family and every access token that carries it (``fam`` claim)."""
        with writing(self.engine) as conn:
            conn.execute(update(AUTH_REFRESH_TOKEN).where(AUTH_REFRESH_TOKEN.c.family_id == family_id)
                         .values(revoked=True))
        self.revoke(f"fam:{family_id}", now() + timedelta(days=days))

    # --- revocation, replay ------------------------------------------------------------------------------

    def revoke(self, key: str, expires_at: datetime) -> None:
        try:
            with writing(self.engine) as conn:
                conn.execute(delete(AUTH_REVOKED).where(AUTH_REVOKED.c.expires_at < now()))
                conn.execute(insert(AUTH_REVOKED).values(id=key, expires_at=expires_at))
        except IntegrityError:
            pass  # already revoked

    def family_revoked(self, family_id: str) -> bool:
        """Also covers refresh tokens saved after the family was revoked (a race with a concurrent reuse)."""
        return self.any_revoked([f"fam:{family_id}"])

    def any_revoked(self, keys: list[str]) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(AUTH_REVOKED.c.id).where(AUTH_REVOKED.c.id.in_(keys))).first() is not None

    def first_use_of_assertion(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        try:
            with writing(self.engine) as conn:
                conn.execute(delete(AUTH_ASSERTION_JTI).where(AUTH_ASSERTION_JTI.c.expires_at < now()))
                conn.execute(insert(AUTH_ASSERTION_JTI).values(issuer=issuer, jti=jti, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    # --- EHR launch --------------------------------------------------------------------------------------

    def create_launch(self, context: dict[str, Any], lifetime: int = 300) -> str:
        launch_id = new_secret()
        with writing(self.engine) as conn:
            conn.execute(insert(AUTH_LAUNCH).values(launch_id=launch_id, context=context,
                                                    expires_at=now() + timedelta(seconds=lifetime)))
        return launch_id

    def launch_context(self, launch_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(AUTH_LAUNCH).where(AUTH_LAUNCH.c.launch_id == launch_id,
                                                         AUTH_LAUNCH.c.expires_at > now())).first()
        return dict(row.context) if row else None

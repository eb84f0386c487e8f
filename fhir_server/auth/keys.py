"""Signing keys for access tokens and id_tokens (RS256), rotated through the JWKS at ``/auth/jwks``.

A key signs for ``rotation_days``; then a new key signs and the old one is retired but stays published for
a day, so every token it signed (access tokens live at most 30 minutes) still verifies: rotation never
breaks tokens in flight. Private keys live in the database (the embedded default needs no key store).
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from joserfc import jws, jwt
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import Engine, insert, or_, select, update

from fhir_server.auth.store import now
from fhir_server.auth.tables import AUTH_SIGNING_KEY

ALG = "RS256"
PUBLISHED_AFTER_RETIREMENT = timedelta(days=1)
RELOAD_SECONDS = 60.0


class KeyRing:
    def __init__(self, engine: Engine, rotation_days: int = 30) -> None:
        self.engine = engine
        self.rotation = timedelta(days=rotation_days)
        self._lock = threading.Lock()
        self._rotating = threading.Lock()  # one first key per process, not one per concurrent request
        self._loaded_at = 0.0
        self._current: RSAKey | None = None
        self._published: KeySet = KeySet([])

    def _load(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(AUTH_SIGNING_KEY).where(or_(
                AUTH_SIGNING_KEY.c.retired_at.is_(None),
                AUTH_SIGNING_KEY.c.retired_at > now() - PUBLISHED_AFTER_RETIREMENT))
                .order_by(AUTH_SIGNING_KEY.c.created_at.desc())).all()
        keys = [RSAKey.import_key(dict(r.private_jwk)) for r in rows]
        current = next((RSAKey.import_key(dict(r.private_jwk)) for r in rows
                        if r.retired_at is None and r.created_at > now() - self.rotation), None)
        self._current = current
        self._published = KeySet(keys)  # type: ignore[arg-type]
        self._loaded_at = time.monotonic()

    def rotate(self) -> RSAKey:
        """Retire the signing key (it stays published) and start signing with a new one."""
        kid = uuid.uuid4().hex
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": ALG, "use": "sig"})
        with self.engine.begin() as conn:
            conn.execute(update(AUTH_SIGNING_KEY).where(AUTH_SIGNING_KEY.c.retired_at.is_(None))
                         .values(retired_at=now()))
            conn.execute(insert(AUTH_SIGNING_KEY).values(kid=kid, alg=ALG, private_jwk=key.as_dict(private=True),
                                                         created_at=now()))
        with self._lock:
            self._load()
        return key

    def signing_key(self) -> RSAKey:
        with self._lock:
            if self._current is None or time.monotonic() - self._loaded_at > RELOAD_SECONDS:
                self._load()
            current = self._current
        if current is not None:
            return current
        with self._rotating:
            with self._lock:
                self._load()
                current = self._current
            return current if current is not None else self.rotate()

    def jwks(self) -> dict[str, Any]:
        self.signing_key()
        with self._lock:
            keys = [k.as_dict(private=False) for k in self._published.keys]
        return {"keys": keys}

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.signing_key()
        return jwt.encode({"alg": ALG, "kid": key.kid}, claims, key, algorithms=[ALG])

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this server signed; raises joserfc's JoseError (or ValueError) otherwise."""
        kid = jws.extract_compact(token.encode()).headers().get("kid")
        with self._lock:
            known = any(k.kid == kid for k in self._published.keys)
            if not known or time.monotonic() - self._loaded_at > RELOAD_SECONDS:
                self._load()
            published = self._published
        decoded = jwt.decode(token, published, algorithms=[ALG])
        return dict(decoded.claims)

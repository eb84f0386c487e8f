"""Per-client-address rate limits on the sign-in and token endpoints, counted in the database so every
server process (``serve --workers N``, several hosts) shares one count.

A fixed one-minute window per (limit, address): one upsert (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``,
on PostgreSQL and SQLite alike) per request. A burst across a window boundary can reach twice the limit;
account lockout (store.py) is what stops guessing one account's password, this slows spraying across
accounts and hammering the token endpoint.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite

from fhir_server.auth.store import writing
from fhir_server.auth.tables import AUTH_RATE_LIMIT

WINDOW_SECONDS = 60


class RateLimiter:
    def __init__(self, engine: Engine, name: str, per_minute: int) -> None:
        self.engine = engine
        self.name = name  # "login" | "token": each limit counts apart
        self.per_minute = per_minute
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        stmt: Any = dialect.insert(AUTH_RATE_LIMIT).values(hits=1)
        self._hit = stmt.on_conflict_do_update(index_elements=["key", "window"],
                                               set_={"hits": AUTH_RATE_LIMIT.c.hits + 1}
                                               ).returning(AUTH_RATE_LIMIT.c.hits)

    def retry_after(self, key: str, now: float | None = None) -> int:
        """0 when this request may proceed (it is counted either way); else seconds until it may."""
        if self.per_minute <= 0:
            return 0
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        with writing(self.engine) as conn:
            hits = int(conn.execute(self._hit, {"key": f"{self.name}:{key}"[:200], "window": window}).scalar_one())
            if hits == 1:  # a new window for this address: forget windows that are over
                conn.execute(delete(AUTH_RATE_LIMIT).where(AUTH_RATE_LIMIT.c.window < window - 1))
        if hits <= self.per_minute:
            return 0
        return max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))

    def reset(self) -> None:
        with writing(self.engine) as conn:
            conn.execute(delete(AUTH_RATE_LIMIT).where(AUTH_RATE_LIMIT.c.key.startswith(f"{self.name}:")))

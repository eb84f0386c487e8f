"""Per-client-address rate limits on the sign-in and token endpoints, counted in the database so every
server process (``serve --workers N``, several hosts) shares one count.

A sliding one-minute window per (limit, address), estimated from two fixed windows as is usual: the count of
the current minute plus the previous minute's count weighted by the part of it still inside the last 60 s.
A fixed window alone let a burst straddling a minute boundary through at twice the limit. One upsert
(``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, on PostgreSQL and SQLite alike) and one primary-key read
per request. Account lockout (store.py) is what stops guessing one account's password; this slows spraying
across accounts and hammering the token endpoint.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy import Engine, bindparam, delete, select
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
        self._previous = select(AUTH_RATE_LIMIT.c.hits).where(AUTH_RATE_LIMIT.c.key == bindparam("key"),
                                                              AUTH_RATE_LIMIT.c.window == bindparam("window"))

    def retry_after(self, key: str, now: float | None = None) -> int:
        """0 when this request may proceed (it is counted either way); else seconds until it may."""
        if self.per_minute <= 0:
            return 0
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        elapsed = (now - window * WINDOW_SECONDS) / WINDOW_SECONDS  # part of the current window gone by
        key = f"{self.name}:{key}"[:200]
        with writing(self.engine) as conn:
            hits = int(conn.execute(self._hit, {"key": key, "window": window}).scalar_one())
            previous = int(conn.execute(self._previous, {"key": key, "window": window - 1}).scalar() or 0)
            if hits == 1:  # a new window for this address: forget windows that are over
                conn.execute(delete(AUTH_RATE_LIMIT).where(AUTH_RATE_LIMIT.c.window < window - 1))
        if previous * (1 - elapsed) + hits <= self.per_minute:
            return 0
        return max(1, math.ceil(self._wait(previous, hits, elapsed) * WINDOW_SECONDS))

    def _wait(self, previous: int, hits: int, elapsed: float) -> float:
        """Windows until one more request would fit, counting none but those already made."""
        room = self.per_minute - hits - 1
        if room >= 0 and previous > 0:  # later in this window, once enough of the previous one has slid out
            return 1 - room / previous - elapsed
        # in the next window this one becomes "previous": wait until enough of it has slid out
        return 1 - elapsed + max(0.0, 1 - (self.per_minute - 1) / hits)

    def reset(self) -> None:
        with writing(self.engine) as conn:
            conn.execute(delete(AUTH_RATE_LIMIT).where(AUTH_RATE_LIMIT.c.key.startswith(f"{self.name}:")))

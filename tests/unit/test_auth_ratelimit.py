"""The database-backed rate limiter of the sign-in and token endpoints (time is passed in, no waits)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from fhir_server.auth.ratelimit import RateLimiter
from fhir_server.auth.tables import AUTH_RATE_LIMIT
from fhir_server.config import Settings
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade


def _engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path / 'rl.sqlite3'}"))
    upgrade(engine)
    return engine


def test_limit_per_key_and_window(tmp_path: Path) -> None:
    limiter = RateLimiter(_engine(tmp_path), "login", 3)
    start = 6000.0  # a window boundary (minute 100)
    assert [limiter.retry_after("a", now=start + i) for i in range(3)] == [0, 0, 0]
    # 4 hits this minute: the next one fits once half of them have slid out of the last 60 s (at 6090)
    assert limiter.retry_after("a", now=start + 3) == 87
    assert limiter.retry_after("b", now=start + 3) == 0  # other addresses are counted apart
    assert limiter.retry_after("a", now=start + 95) == 0  # 5 * 25/60 + 1 = 3.08 > 3 would refuse; 4 left


def test_a_burst_across_a_minute_boundary_is_still_limited(tmp_path: Path) -> None:
    """A fixed window let 3 hits at the end of one minute and 3 at the start of the next all through."""
    limiter = RateLimiter(_engine(tmp_path), "login", 3)

    def burst(key: str) -> list[int]:
        return [limiter.retry_after(key, now=6057.0 + i) for i in (0, 1, 2, 3, 4)]  # 6060 starts a minute

    waits = burst("a")
    assert waits[:3] == [0, 0, 0] and waits[3] > 0 and waits[4] > 0
    # every probe counts, so each side of the wait said is probed on an address of its own
    assert burst("b")[4] == waits[4] and limiter.retry_after("b", now=6061.0 + waits[4] - 1) > 0
    assert burst("c")[4] == waits[4] and limiter.retry_after("c", now=6061.0 + waits[4]) == 0


def test_processes_share_one_count_and_limits_count_apart(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    first, second = RateLimiter(engine, "token", 2), RateLimiter(engine, "token", 2)  # two server processes
    login = RateLimiter(engine, "login", 2)
    assert first.retry_after("a", now=60.0) == 0
    assert second.retry_after("a", now=61.0) == 0
    assert first.retry_after("a", now=62.0) > 0
    assert login.retry_after("a", now=62.0) == 0
    first.reset()
    assert second.retry_after("a", now=63.0) == 0


def test_zero_means_unlimited_and_old_windows_are_pruned(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    assert all(RateLimiter(engine, "login", 0).retry_after("a", now=1.0) == 0 for _ in range(100))
    limiter = RateLimiter(engine, "login", 5)
    for minute in range(10):
        limiter.retry_after(f"k{minute}", now=minute * 60.0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AUTH_RATE_LIMIT)).scalar_one() <= 2

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
    assert limiter.retry_after("a", now=start + 3) == 57  # until the window ends at 6060
    assert limiter.retry_after("b", now=start + 3) == 0  # other addresses are counted apart
    assert limiter.retry_after("a", now=start + 60.5) == 0  # a new window


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

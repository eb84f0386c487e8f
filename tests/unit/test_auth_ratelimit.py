"""The sliding-window rate limiter of the sign-in and token endpoints (no clock waits: time is passed in)."""

from __future__ import annotations

from fhir_server.auth.ratelimit import RateLimiter


def test_limit_per_key_and_window() -> None:
    limiter = RateLimiter(3)
    assert [limiter.retry_after("a", now=100.0 + i) for i in range(3)] == [0, 0, 0]
    assert limiter.retry_after("a", now=103.0) == 57  # the first hit leaves the window at 160
    assert limiter.retry_after("b", now=103.0) == 0  # other addresses are counted apart
    assert limiter.retry_after("a", now=160.5) == 0  # a slot freed


def test_zero_means_unlimited_and_memory_is_bounded() -> None:
    assert all(RateLimiter(0).retry_after("a", now=1.0) == 0 for _ in range(1000))
    limiter = RateLimiter(5, max_keys=10)
    for i in range(50):
        limiter.retry_after(f"k{i}", now=float(i * 100))
    assert len(limiter._hits) <= 10

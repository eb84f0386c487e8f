"""Value helpers shared by extraction and query: string normalisation, hashes, FHIR date ranges.

A FHIR date or dateTime denotes a range of instants given by its precision (search.html#date): ``2013`` is
all of 2013, ``2013-01-14T10:00`` a minute. Both index rows and search values are [low, high] with
inclusive bounds in UTC, microsecond resolution; values without a timezone are taken as UTC.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

from fhir_server.search.tables import MAX_INDEXED

MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_TICK = timedelta(microseconds=1)

DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?")


def normalize(text: str) -> str:
    """Accent- and case-insensitive form used for string search (``Chloé`` and ``CHLOE`` match)."""
    if text.isascii():  # the common case, 10x cheaper
        return text.lower()[:MAX_INDEXED]
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()[:MAX_INDEXED]


# Memoised: a pure function of its parts, and most calls repeat (type + param + system, common codes); a hit
# costs a fifth of a blake2b. Bounded, so a stream of unique identifiers only churns it (bench/RESULTS.md,
# "write path").
@lru_cache(maxsize=8192)
def hash64(*parts: str | None) -> int:
    """A signed 64-bit hash of the parts (None and "" differ), stable across processes and databases."""
    data = "\x1f".join(["\x00" if p is None else p for p in parts]).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """[low, high] of a FHIR date / dateTime / instant, or None when the text is not one."""
    m = DATE_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        return None
    try:
        year = int(m["y"])
        tz = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        if m["m"] is None:
            low = datetime(year, 1, 1, tzinfo=tz)
            high = datetime(year, 12, 31, 23, 59, 59, 999999, tzinfo=tz)
        elif m["d"] is None:
            month = int(m["m"])
            last = calendar.monthrange(year, month)[1]
            low = datetime(year, month, 1, tzinfo=tz)
            high = datetime(year, month, last, 23, 59, 59, 999999, tzinfo=tz)
        else:
            day = datetime(year, int(m["m"]), int(m["d"]), tzinfo=tz)
            if m["H"] is None:
                low, high = day, day + timedelta(days=1) - _TICK
            else:
                low = day.replace(hour=int(m["H"]), minute=int(m["M"]))
                if m["S"] is None:
                    high = low + timedelta(minutes=1) - _TICK
                elif m["f"] is None:
                    low = low.replace(second=int(m["S"]))
                    high = low + timedelta(seconds=1) - _TICK
                else:
                    digits = m["f"][:6]
                    low = low.replace(second=int(m["S"]), microsecond=int(digits.ljust(6, "0")))
                    high = low + timedelta(microseconds=10 ** (6 - len(digits))) - _TICK
    except (ValueError, OverflowError):
        return None
    return _utc(low), _utc(high)


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return MIN_INSTANT if value.year < 2 else MAX_INSTANT

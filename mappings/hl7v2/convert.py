"""v2 primitive values -> FHIR primitives (dates, times, numbers), raising located data type errors."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation

from mappings.hl7v2.errors import DATA_TYPE_ERROR

_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?")


class ConversionError(ValueError):
    code = DATA_TYPE_ERROR


def _parts(value: str, what: str) -> tuple[str | None, ...]:
    m = _TS.fullmatch(value.strip())
    if not m:
        raise ConversionError(f"{value!r} is not a valid {what}")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    if (month and not 1 <= int(month) <= 12) or (day and not 1 <= int(day) <= 31):
        raise ConversionError(f"{value!r} is not a valid {what}")
    if (hour and int(hour) > 23) or (minute and int(minute) > 59) or (second and int(second) > 60):
        raise ConversionError(f"{value!r} is not a valid {what}")
    if day:
        try:
            date(int(year), int(month or 1), int(day))
        except ValueError as exc:
            raise ConversionError(f"{value!r} is not a valid {what}") from exc
    return year, month, day, hour, minute, second, frac, tz


def to_date(value: str) -> str:
    """DT/TS -> FHIR date (YYYY, YYYY-MM or YYYY-MM-DD; a time part is dropped)."""
    year, month, day, *_ = _parts(value, "date")
    return "-".join(p for p in (year, month, day) if p)


def to_datetime(value: str, default_tz: str = "+00:00") -> str:
    """TS/DTM -> FHIR dateTime. FHIR needs a zone once there is a time: v2 without one gets ``default_tz``."""
    year, month, day, hour, minute, second, frac, tz = _parts(value, "timestamp")
    date = "-".join(p for p in (year, month, day) if p)
    if not (hour and day):
        return date
    time = f"{hour}:{minute or '00'}:{second or '00'}" + (f".{frac}" if frac else "")
    zone = f"{tz[:3]}:{tz[3:]}" if tz else default_tz
    return f"{date}T{time}{'Z' if zone in ('+00:00', '-00:00') and not tz else zone}"


def to_instant(value: str, default_tz: str = "+00:00") -> str:
    out = to_datetime(value, default_tz)
    if "T" not in out:
        raise ConversionError(f"{value!r} is not precise enough for an instant")
    return out


def to_time(value: str) -> str:
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.\d+)?(?:[+-]\d{4})?", value.strip())
    if not m or int(m.group(1)) > 23:
        raise ConversionError(f"{value!r} is not a valid time")
    return f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}"


def to_decimal(value: str) -> int | float:
    text = value.strip()
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise ConversionError(f"{value!r} is not a number") from exc
    if not number.is_finite():
        raise ConversionError(f"{value!r} is not a number")
    return int(number) if re.fullmatch(r"[+-]?\d+", text) else float(number)


def to_integer(value: str) -> int:
    number = to_decimal(value)
    if not isinstance(number, int):
        raise ConversionError(f"{value!r} is not an integer")
    return number


def to_boolean(value: str) -> bool:
    if value.upper() in ("Y", "YES", "TRUE", "1"):
        return True
    if value.upper() in ("N", "NO", "FALSE", "0"):
        return False
    raise ConversionError(f"{value!r} is not Y or N")

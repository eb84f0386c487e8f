"""Checks for FHIR R4 primitive values as they appear in FHIR JSON.

The regexes come from the R4 StructureDefinitions (the ``regex`` extension on each primitive's ``value``
element); this module adds what JSON needs on top (http://hl7.org/fhir/R4/json.html#primitive): booleans are
JSON booleans, integer/decimal are JSON numbers, everything else is a non-empty JSON string, and dates must
exist in the calendar. No string may hold U+0000: R4 says strings SHOULD NOT hold characters below U+0020
but tab, CR and LF; NUL is refused outright, as PostgreSQL can store it neither in jsonb nor in text.
Each check returns None when the value is valid, else the reason.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

Check = Callable[[Any], "str | None"]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MAX_STRING = 1024 * 1024  # R4 string: "SHALL NOT exceed 1MB in size" (counted here in characters)

# JSON numbers carry integer/decimal; the SD regexes for these describe the XML/string form.
_NUMBER_TYPES = {"integer": (INT32_MIN, "an integer"), "unsignedInt": (0, "an unsignedInt (>= 0)"),
                 "positiveInt": (1, "a positiveInt (>= 1)")}
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
_WHITESPACE = re.compile(r"\s+", re.ASCII)
_BASE64 = re.compile(r"[0-9a-zA-Z+/=]*", re.ASCII)
NUL = "\x00"
NUL_REASON = "U+0000 (NUL) is not allowed in a FHIR string"


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _boolean(value: Any) -> str | None:
    return None if value is True or value is False else f"{_describe(value)} is not a JSON boolean"


def _integer(low: int, what: str) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f"{_describe(value)} is not a JSON number holding {what}"
        if value < low or value > INT32_MAX:
            return f"{value} is out of range for {what}"
        return None
    return check


def _decimal(value: Any) -> str | None:
    kind = type(value)
    if kind is int or kind is Decimal or (kind is float and math.isfinite(value)):
        return None
    return f"{_describe(value)} is not a JSON number holding a decimal"


def _valid_day(value: str) -> bool:
    """The regex allows day 31 in every month; a date SHALL be a valid date."""
    if len(value) < 10 or int(value[8:10]) <= 28:
        return True
    return int(value[8:10]) <= calendar.monthrange(int(value[:4]), int(value[5:7]))[1]


def _string(type_name: str, regex: re.Pattern[str] | None) -> Check:
    dated = type_name in _DATE_TYPES
    limit = MAX_STRING if type_name in ("string", "markdown") else None
    match = regex.fullmatch if regex is not None else None

    def check(value: Any) -> str | None:
        if type(value) is not str:
            return f"{_describe(value)} is not a JSON string holding a {type_name}"
        if not value:
            return f"an empty string is not a valid {type_name}"
        if NUL in value:
            return NUL_REASON
        if limit is not None and len(value) > limit:
            return f"a {type_name} SHALL NOT exceed 1MB"
        if match is not None and match(value) is None:
            return f"{_describe(value)} is not a valid {type_name}"
        if dated and not _valid_day(value):
            return f"{_describe(value)} is not a valid {type_name}: no such day"
        return None
    return check


def _base64(value: Any) -> str | None:
    # R4's regex (\s*([0-9a-zA-Z\+/=]){4}\s*)+ backtracks exponentially on bad input; this is the same
    # alphabet in groups of four, with whitespace allowed anywhere, checked in linear time.
    if type(value) is not str:
        return f"{_describe(value)} is not a JSON string holding a base64Binary"
    compact = _WHITESPACE.sub("", value) if not value.isalnum() else value
    if not compact or len(compact) % 4 or _BASE64.fullmatch(compact) is None:
        return "the value is not valid base64"
    return None


def _xhtml(value: Any) -> str | None:
    if type(value) is not str or not value.lstrip().startswith("<div"):
        return "the narrative must be a JSON string holding an XHTML <div> element"
    return NUL_REASON if NUL in value else None


def primitive_check(type_name: str, regex: str | None) -> Check:
    """The check for one R4 primitive type, given the regex from its StructureDefinition."""
    if type_name == "boolean":
        return _boolean
    if type_name in _NUMBER_TYPES:
        low, what = _NUMBER_TYPES[type_name]
        return _integer(low, what)
    if type_name == "decimal":
        return _decimal
    if type_name == "base64Binary":
        return _base64
    if type_name == "xhtml":
        return _xhtml
    # Java regex semantics: \s and \S are ASCII classes there, so a no-break space is not "whitespace".
    return _string(type_name, re.compile(regex, re.ASCII) if regex else None)

"""Request bodies as JSON: orjson's parse, plus the check orjson does not make, that no object repeats a key.

RFC 8259 leaves a repeated name's meaning open and orjson keeps the last silently, so
``{"gender": "male", "gender": "female"}`` would store whichever came last; FHIR JSON has each element once,
and a body that says two things is refused (400, naming the key).

The check costs about one orjson.dumps of the parsed body: it counts the unescaped ``"`` that JSON
whitespace and a ``:`` follow, in the body and in orjson's re-serialisation of what it parsed. Those are the
keys, plus strings that begin with ``:`` (in both alike); a dropped duplicate makes the body's count larger.
Escapes orjson writes differently never add such quotes to the body's side, but ``\\u003a`` (``:``) and
``\\u0020`` (space) can add them to the re-serialisation's, which could hide a duplicate: bodies holding those
escapes get the exact check (the standard library's parser, seeing every pair), as does any count that differs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from fhir_server.errors import INVALID, STRUCTURE, FhirError

_SPACED_COLON = re.compile(rb'"[ \t\r\n]+:')
_HIDING_ESCAPE = re.compile(rb"\\u00(?:3[aA]|20)")


def parse_json(body: bytes) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, STRUCTURE, f"The body is not valid JSON: {exc}") from exc
    if isinstance(value, dict | list) and not _same_keys(body, value):
        _find_duplicate(body)
    return value


def _same_keys(body: bytes, value: Any) -> bool:
    if b"\\u00" in body and _HIDING_ESCAPE.search(body):
        return False
    try:
        written = orjson.dumps(value)
    except orjson.JSONEncodeError:  # deeper than orjson writes (validation refuses it later): check exactly
        return False
    return _quotes_before_colons(body) == _quotes_before_colons(written)


def _quotes_before_colons(text: bytes) -> int:
    # '":' whose quote ends a string: preceded by an even run of backslashes (an odd run escapes it).
    count, run, sign = text.count(b'":'), 1, -1
    while escaped := text.count(b"\\" * run + b'":'):
        count += sign * escaped
        run, sign = run + 1, -sign
    for match in _SPACED_COLON.finditer(text):  # '"key" : value' (pretty printers such as Jackson's)
        start = end = match.start()
        while start > 0 and text[start - 1] == 0x5C:
            start -= 1
        count += (end - start) % 2 == 0
    return count


def _find_duplicate(body: bytes) -> None:
    """The exact check: raise naming the first key an object repeats (and return when there is none)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    shown = key.replace("\x00", "\\u0000")
                    raise FhirError(400, INVALID, f"The key '{shown}' appears twice in one JSON object; FHIR "
                                                  "JSON has each element once", (shown,))
                seen.add(key)
        return obj

    try:
        json.loads(body, object_pairs_hook=pairs)
    except RecursionError:  # deeper than the standard parser goes: no FHIR resource is (see validation)
        raise FhirError(400, STRUCTURE, "The body is nested too deeply to read") from None

"""Request bodies: no JSON object may repeat a key (orjson alone keeps the last one silently). The fast check
(key counts in the body and in orjson's re-serialisation) must agree with the exact one (the standard
library's parser seeing every pair) on any JSON, however it is written."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.errors import FhirError
from fhir_server.rest.json_body import parse_json

# Strings rich in the characters the check looks at: quotes, backslashes, colons, spaces.
text = st.text(alphabet=st.sampled_from(['"', "\\", ":", " ", "a", "b", "é", "\t", "/", "\x00"]), max_size=6)
values = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                      max_leaves=12)
STYLES = [
    lambda v: json.dumps(v),  # ", " and ": "
    lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")),
    lambda v: json.dumps(v, indent=2),
    lambda v: json.dumps(v, separators=(" , ", " : ")),  # Jackson's pretty printer writes "key" : value
    lambda v: orjson.dumps(v).decode(),
]


def _with_duplicate(body: str) -> str | None:
    """The same JSON with its first object's first key written twice (None: no object with a key)."""
    value = json.loads(body)
    if not isinstance(value, dict) or not value:
        return None
    key, first = next(iter(value.items()))
    return "{" + json.dumps(key) + ":" + json.dumps(first) + "," + body.strip()[1:]


@settings(max_examples=200, deadline=None)
@given(values, st.sampled_from(range(len(STYLES))))
def test_any_json_without_duplicates_is_accepted_and_with_one_refused(value: Any, style: int) -> None:
    body = STYLES[style](value)
    assert parse_json(body.encode()) == orjson.loads(body)
    duplicated = _with_duplicate(body)
    if duplicated is not None:
        with pytest.raises(FhirError) as refused:
            parse_json(duplicated.encode())
        assert refused.value.status == 400 and "twice" in refused.value.message


@pytest.mark.parametrize("body", [
    b'{"a":1,"a":2}', b'{"a" :1, "a"\n:2}', b'[{"x":{"y":1,"z":{},"y":2}}]', b'{"a\\\\":1,"a\\\\":2}',
    b'{"a":"\\":","a":1}', b'{"a\\u005c":1,"a\\\\":2}',
    b'{"a":1,"b":"\\u0020:","a":3}', b'{"a":1,"b":"\\u003a","a":3}',  # escapes that could hide one
])
def test_duplicates_are_found_however_written(body: bytes) -> None:
    with pytest.raises(FhirError):
        parse_json(body)


def test_the_duplicate_key_is_named() -> None:
    with pytest.raises(FhirError) as refused:
        parse_json(b'{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}')
    assert refused.value.issues[0].expression == ("family",)

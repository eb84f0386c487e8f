"""Value comparisons the profile checks need: fixed[x] (exact), pattern[x] (contained), JSON path walks,
and the types and references of instance values."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from fhir_server.definitions import resource_types, type_structure_definitions

_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


@lru_cache(maxsize=1)
def type_by_suffix() -> dict[str, str]:
    """``Quantity`` -> Quantity, ``DateTime`` -> dateTime: the JSON suffix of a choice element -> its type."""
    return {name[0].upper() + name[1:]: name for name in type_structure_definitions()}


@lru_cache(maxsize=1)
def primitive_types() -> frozenset[str]:
    return frozenset(n for n, sd in type_structure_definitions().items() if sd["kind"] == "primitive-type")


def equal(actual: Any, expected: Any) -> bool:
    """fixed[x]: the same value, exactly (no extra properties, same array lengths)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or actual.keys() != expected.keys():
            return False
        return all(equal(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            equal(a, e) for a, e in zip(actual, expected, strict=True))
    return (type(actual) is type(expected) and actual == expected) or _same_number(actual, expected)


def contains(actual: Any, pattern: Any) -> bool:
    """pattern[x]: every property of the pattern is present with that value; each array item of the
    pattern is matched by some item of the instance's array."""
    if isinstance(pattern, dict):
        if not isinstance(actual, dict):
            return False
        return all(k in actual and contains(actual[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        items = actual if isinstance(actual, list) else [actual]
        return all(any(contains(a, p) for a in items) for p in pattern)
    return (type(actual) is type(pattern) and actual == pattern) or _same_number(actual, pattern)


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def values_at(value: Any, steps: list[str]) -> list[Any]:
    """The values at a simple dotted path below ``value`` (arrays flattened, ``value`` matching valueX)."""
    current = [value]
    for step in steps:
        if step == "$this":
            continue
        nxt: list[Any] = []
        for item in current:
            if not isinstance(item, dict):
                continue
            found = item.get(step)
            if found is None:
                for key, v in item.items():
                    if key.startswith(step) and key[len(step):] in type_by_suffix():
                        found = v
                        break
            if found is None:
                continue
            nxt.extend(found if isinstance(found, list) else [found])
        current = nxt
    return current


def reference_type(reference: str, local: dict[str, str]) -> str | None:
    """The resource type a Reference.reference points at, where it can be told without reading it:
    ``Patient/1``, an absolute URL ending so, a Bundle's ``urn:uuid:`` fullUrl, or a ``#contained`` id."""
    if reference in local:
        return local[reference]
    m = _REFERENCE.search(reference)
    if m and m.group(1) in resource_types():
        return m.group(1)
    return None


def core_type(url: str) -> str | None:
    """The type named by a core StructureDefinition URL (``.../StructureDefinition/Patient``), else None."""
    if url.startswith(CORE_PREFIX):
        name = url[len(CORE_PREFIX):].split("|", 1)[0]
        if name in resource_types() or name in type_structure_definitions() or name in ("Resource",
                                                                                        "DomainResource"):
            return name
    return None


def codings(value: Any, type_code: str | None) -> list[tuple[str | None, str]] | None:
    """The (system, code) pairs a bound value carries; None when the type carries none."""
    if type_code in ("code", "string", "uri") and isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return None
    if type_code == "Coding" or (type_code == "Quantity" and value.get("code")):
        code = value.get("code")
        return [(value.get("system"), code)] if isinstance(code, str) else []
    if type_code == "CodeableConcept":
        return [(c.get("system"), c["code"]) for c in value.get("coding") or []
                if isinstance(c, dict) and isinstance(c.get("code"), str)]
    return None

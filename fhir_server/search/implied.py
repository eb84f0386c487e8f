"""The code system a plain ``code`` element implies, from its binding in the R4 definitions.

``Patient.gender`` is a ``code`` bound (required) to ValueSet administrative-gender, whose compose includes
the one system http://hl7.org/fhir/administrative-gender; so the token row for ``gender=male`` carries that
system and ``gender=http://hl7.org/fhir/administrative-gender|male`` matches (search.html#token: the system
is implied by the element's binding). Derived from the StructureDefinitions and ValueSets bundled in
``fhir_server/definitions``; a parameter whose parts imply different systems (or none) implies none.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from fhir_server.definitions import bundle_resources, resource_structure_definitions, type_structure_definitions
from fhir_server.search.registry import SearchParam, split_union

_PATH = re.compile(r"^[A-Z][A-Za-z]+(\.[a-z][A-Za-z]*)+$")


@lru_cache(maxsize=1)
def _value_set_systems() -> dict[str, str]:
    """ValueSet url -> the single code system its compose includes whole (no filters, no nested sets)."""
    out: dict[str, str] = {}
    for vs in bundle_resources("valuesets", "ValueSet"):
        includes = (vs.get("compose") or {}).get("include") or []
        systems = {inc.get("system") for inc in includes}
        if len(systems) == 1 and all(inc.get("system") and not inc.get("valueSet") and not inc.get("filter")
                                     for inc in includes):
            out[vs["url"]] = includes[0]["system"]
    return out


@lru_cache(maxsize=512)
def _elements(type_name: str) -> dict[str, dict[str, Any]]:
    sd = resource_structure_definitions().get(type_name) or type_structure_definitions().get(type_name)
    return {e["path"]: e for e in (sd or {}).get("snapshot", {}).get("element", [])}


def _element(path: str) -> dict[str, Any] | None:
    """The ElementDefinition of a dotted path, following complex datatypes (``Patient.contact.gender``,
    ``Patient.telecom.use`` through ContactPoint)."""
    names = path.split(".")
    type_name = names[0]
    current: dict[str, Any] | None = None
    i = 1
    while i < len(names):
        elements = _elements(type_name)
        # the longest prefix this type defines itself (backbone elements live in the same definition)
        for j in range(len(names), i, -1):
            candidate = ".".join([type_name, *names[i:j]])
            if candidate in elements:
                current, i = elements[candidate], j
                break
        else:
            return None
        if i < len(names):
            types = current.get("type") or []
            if len(types) != 1:
                return None
            type_name = types[0]["code"]
    return current


def _implied(expression_part: str) -> str | None:
    if not _PATH.match(expression_part):
        return None
    element = _element(expression_part)
    if element is None or [t.get("code") for t in element.get("type") or []] != ["code"]:
        return None
    url = ((element.get("binding") or {}).get("valueSet") or "").split("|", 1)[0]
    return _value_set_systems().get(url) if url else None


@lru_cache(maxsize=4096)
def implied_system(sp: SearchParam) -> str | None:
    """The system every plain code value of this token parameter implies, or None."""
    if sp.type != "token" or not sp.expression:
        return None
    systems = {_implied(part) for part in split_union(sp.expression)}
    return systems.pop() if len(systems) == 1 else None

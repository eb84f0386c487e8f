"""Evaluates a ValueSet's compose (include / exclude, concept lists, filters, nested value sets).

``members(repo, vs)`` enumerates the whole value set; ``members(repo, vs, only=(system, code))`` answers
membership of one code with the same rules but reads only that code's rows ($validate-code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir_server.errors import INVALID, NOT_FOUND, NOT_SUPPORTED, TOO_COSTLY, FhirError
from terminology import store, ucum
from terminology.store import CodeSystemRef, Concept

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

MAX_DEPTH = 10  # nested ValueSet references; deeper is almost surely a cycle
WHOLE_LIMIT = 20_000  # value sets up to this many candidate codes are worth expanding whole for $validate-code
Only = tuple[str | None, str]  # (system or None for any, code)


@dataclass(frozen=True)
class Member:
    system: str
    code: str
    display: str | None = None
    version: str | None = None
    designations: tuple[dict[str, Any], ...] = ()
    abstract: bool = False  # notSelectable: a grouper, not for use in data
    inactive: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.system, self.code


def members(repo: Repository, vs: dict[str, Any], only: Only | None = None, depth: int = 0, *,
            text: str | None = None) -> list[Member]:
    """The value set's members; ``text`` (the $expand filter) may narrow them early, in SQL: callers still
    apply ``text_filter``."""
    if depth > MAX_DEPTH:
        raise FhirError(400, TOO_COSTLY, "ValueSet references nest too deeply (a cycle?)", ("ValueSet.compose",))
    compose = vs.get("compose")
    if not compose:
        return _expansion_members(vs.get("expansion", {}).get("contains") or [], only)
    out: dict[tuple[str, str], Member] = {}
    for i, inc in enumerate(compose.get("include") or []):
        for m in _set(repo, inc, only, depth, f"ValueSet.compose.include[{i}]", text):
            out.setdefault(m.key, m)
    for i, exc in enumerate(compose.get("exclude") or []):
        if not out:
            break
        for m in _set(repo, exc, only, depth, f"ValueSet.compose.exclude[{i}]", text):
            out.pop(m.key, None)
    return list(out.values())


def whole(repo: Repository, vs: dict[str, Any]) -> list[Member] | None:
    """All members, when the value set is cheap to hold (at most WHOLE_LIMIT candidate codes, only stored
    code systems with concepts, no nested value sets); None otherwise (then ask code by code)."""
    compose = vs.get("compose")
    if not compose:
        return members(repo, vs)  # an expansion carried in the resource
    total = 0
    for part in (compose.get("include") or []) + (compose.get("exclude") or []):
        system = part.get("system")
        if part.get("valueSet") or not system:
            return None
        if part.get("concept"):
            total += len(part["concept"])
            continue
        cs = store.code_system(repo, system, part.get("version"))
        if cs is None or cs.concept_count == 0:  # UCUM, a stub, an unknown system: their errors per code
            return None
        total += cs.concept_count
    return members(repo, vs) if total <= WHOLE_LIMIT else None


def _expansion_members(contains: list[dict[str, Any]], only: Only | None) -> list[Member]:
    out: list[Member] = []
    for c in contains:
        if c.get("code") and c.get("system") and _matches(only, c["system"], c["code"]):
            out.append(Member(c["system"], c["code"], c.get("display"), c.get("version"),
                              abstract=bool(c.get("abstract")), inactive=bool(c.get("inactive"))))
        out += _expansion_members(c.get("contains") or [], only)
    return out


def _matches(only: Only | None, system: str, code: str) -> bool:
    return only is None or (only[1] == code and only[0] in (None, system))


def _set(repo: Repository, inc: dict[str, Any], only: Only | None, depth: int, where: str,
         text: str | None) -> list[Member]:
    """One include/exclude: its system part intersected with every value set it names."""
    system = inc.get("system")
    result: dict[tuple[str, str], Member] | None = None
    if system:
        if only is not None and only[0] not in (None, system):
            return []
        result = {m.key: m for m in _system_part(repo, inc, only, where, text)}
    for j, url in enumerate(inc.get("valueSet") or []):
        nested = store.by_url(repo, "ValueSet", url, expression=f"{where}.valueSet[{j}]")
        found = {m.key: m for m in members(repo, nested, only, depth + 1, text=text)}
        result = found if result is None else {k: m for k, m in result.items() if k in found}
    return list((result or {}).values())


def _system_part(repo: Repository, inc: dict[str, Any], only: Only | None, where: str,
                 text: str | None) -> list[Member]:
    system: str = inc["system"]
    cs = store.code_system(repo, system, inc.get("version"))
    listed = inc.get("concept") or []
    if listed:
        wanted = [c for c in listed if c.get("code") and _matches(only, system, c["code"])]
        known = {c.code: c for c in store.concepts(repo, cs, {c["code"] for c in wanted})} if cs else {}
        return [Member(system, c["code"], c.get("display") or (known[c["code"]].display if c["code"] in known
                                                                  else None),
                       cs.version or None if cs else inc.get("version"), tuple(c.get("designation") or ()))
                for c in wanted if cs is None or c["code"] in known]
    if cs is None and system == ucum.SYSTEM and not inc.get("filter"):
        if only is None:
            raise FhirError(422, TOO_COSTLY, "All of UCUM cannot be expanded: it is a grammar, not a list",
                            (f"{where}.system",))
        return [Member(system, only[1], only[1])] if ucum.is_valid(only[1]) else []
    if cs is not None and cs.concept_count == 0:  # a stub (content not-present), e.g. the core's SNOMED CT
        raise FhirError(422, NOT_FOUND, f"The code system {system} has no concepts on this server: import it "
                                        "(fhir-server terminology import)", (f"{where}.system",))
    if cs is None:
        raise FhirError(422, NOT_FOUND, f"The code system {system} is not known to this server", (f"{where}.system",))
    codes: set[str] | None = {only[1]} if only is not None else None
    for k, flt in enumerate(inc.get("filter") or []):
        codes = _filter(repo, cs, flt, codes, f"{where}.filter[{k}]")
    found = store.concepts(repo, cs, codes, text=text)
    for k, flt in enumerate(inc.get("filter") or []):
        if flt.get("op") in ("=", "regex", "in", "not-in", "exists") and flt.get("property") not in _CODE_PROPS:
            found = [c for c in found if _property_test(c, flt, f"{where}.filter[{k}]")]
    return [Member(system, c.code, c.display, cs.version or None, tuple(c.designations),
                   "true" in _property_values(c, "notSelectable"),
                   bool({"retired", "inactive"} & set(_property_values(c, "status")))
                   or "true" in _property_values(c, "inactive")) for c in found]


_CODE_PROPS = ("code", "concept")


def _filter(repo: Repository, cs: CodeSystemRef, flt: dict[str, Any], codes: set[str] | None,
            where: str) -> set[str] | None:
    """Narrow the candidate codes (None: all of the system) by one filter that the closure or code answers."""
    op, prop, value = flt.get("op"), flt.get("property"), flt.get("value")
    if not op or value is None:
        raise FhirError(400, INVALID, "A filter needs op and value", (where,))
    if op in ("is-a", "descendent-of", "generalizes", "is-not-a"):
        if prop not in _CODE_PROPS:
            raise FhirError(400, NOT_SUPPORTED, f"The filter op {op} applies to the concept property", (where,))
        if op == "generalizes":
            hits = store.ancestors(repo, cs, value)
        else:
            hits = store.descendants(repo, cs, value, include_self=op != "descendent-of")
        if op == "is-not-a":
            universe = codes if codes is not None else {c.code for c in store.concepts(repo, cs)}
            return universe - hits
        return hits if codes is None else codes & hits
    if op not in ("=", "regex", "in", "not-in", "exists"):
        raise FhirError(400, NOT_SUPPORTED, f"The filter op {op} is not supported", (where,))
    if prop not in _CODE_PROPS:
        return codes  # a concept property: tested on the rows (_property_test)
    if op == "=":
        hits = {value}
    elif op == "in" or op == "not-in":
        listed = {v.strip() for v in value.split(",")}
        if op == "in":
            hits = listed
        else:
            universe = codes if codes is not None else {c.code for c in store.concepts(repo, cs)}
            return universe - listed
    elif op == "regex":
        pattern = _regex(value, where)
        universe = codes if codes is not None else {c.code for c in store.concepts(repo, cs)}
        return {c for c in universe if pattern.fullmatch(c)}
    else:
        raise FhirError(400, NOT_SUPPORTED, "The filter op exists does not apply to the code", (where,))
    return hits if codes is None else codes & hits


def _regex(value: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise FhirError(400, INVALID, f"The filter regex is not valid: {exc}", (where,)) from None


def _property_values(concept: Concept, prop: str) -> list[str]:
    if prop == "display":
        return [concept.display] if concept.display else []
    if prop == "parent":
        return concept.parents
    out = []
    for p in concept.properties:
        if p.get("code") == prop:
            out += [str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in p.items() if k.startswith("value") and not isinstance(v, dict)]
            out += [v["code"] for k, v in p.items() if k == "valueCoding" and isinstance(v, dict) and "code" in v]
    return out


def _property_test(concept: Concept, flt: dict[str, Any], where: str) -> bool:
    op, value = flt["op"], str(flt["value"])
    values = _property_values(concept, flt["property"])
    if op == "=":
        return value in values
    if op == "in":
        return bool({v.strip() for v in value.split(",")} & set(values))
    if op == "not-in":
        return not ({v.strip() for v in value.split(",")} & set(values))
    if op == "exists":
        return bool(values) == (value == "true")
    pattern = _regex(value, where)
    return any(pattern.fullmatch(v) for v in values)


def text_filter(items: list[Member], text: str) -> list[Member]:
    """The $expand ``filter``: every word must start a word of the display, or the text starts the code."""
    terms = text.lower().split()
    if not terms:
        return items
    lowered = text.lower()

    def hit(m: Member) -> bool:
        if m.code.lower().startswith(lowered):
            return True
        words = re.split(r"[^\w]+", (m.display or "").lower())
        return all(any(w.startswith(t) for w in words) for t in terms)

    return [m for m in items if hit(m)]

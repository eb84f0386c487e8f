"""Index rows of one resource: each applicable search parameter's FHIRPath, its values turned into rows.

The plan per resource type (which parameters, their compiled expressions) is computed once. Values are
turned into rows by shape, as HAPI's extractor does: a CodeableConcept yields one token row per coding,
a HumanName one string row per part, a Period one date range, and so on. Reference.identifier values are
also indexed as tokens under ``<param>:identifier`` and typed Identifiers under ``<param>:of-type``, so
those modifiers are plain token lookups.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fhir_server.definitions import resource_types
from fhir_server.search import ucum
from fhir_server.search.composite import CompositeExtractor
from fhir_server.search.implied import implied_system
from fhir_server.search.paths import Evaluator, compile_expression, root_keys
from fhir_server.search.registry import Registry, SearchParam
from fhir_server.search.values import MAX_INSTANT, MIN_INSTANT, date_range, hash64, normalize

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}
STRING_PARTS = ("text", "family", "given", "prefix", "suffix", "line", "city", "district", "state",
                "postalCode", "country")
ISO_4217 = "urn:iso:std:iso:4217"


@dataclass
class IndexRows:
    """Rows to insert, by parameter type (= index table)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(row)

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())


def parse_reference(text: str, base_url: str = "") -> tuple[str | None, str | None, str | None] | None:
    """(target type, target id, url) of a reference string; url only for targets not on this server."""
    if not text or text.startswith(("#", "urn:")):
        return None
    if base_url and text.startswith(base_url.rstrip("/") + "/"):
        text = text[len(base_url.rstrip("/")) + 1:]
    absolute = "://" in text
    segments = text.split("|", 1)[0].split("/")
    if len(segments) >= 4 and segments[-2] == "_history":
        segments = segments[:-2]
    if len(segments) >= 2 and segments[-2] in resource_types() and ID_RE.fullmatch(segments[-1]):
        return segments[-2], segments[-1], (text if absolute else None)
    if absolute:
        return None, None, text
    if len(segments) == 1 and ID_RE.fullmatch(segments[0]):
        return None, segments[0], None
    return None, None, text


class Extractor:
    def __init__(self, registry: Registry, base_url: str = "") -> None:
        self.registry = registry
        self.base_url = base_url
        self._plans: dict[str, list[tuple[SearchParam, Evaluator]]] = {}
        self._roots: dict[str, list[frozenset[str] | None]] = {}
        self._version = registry.version
        self.composites = CompositeExtractor(self)

    def plan(self, resource_type: str) -> list[tuple[SearchParam, Evaluator]]:
        if self._version != self.registry.version:  # runtime SearchParameters changed the registry
            self._plans, self._roots, self._version = {}, {}, self.registry.version
            self.composites = CompositeExtractor(self)
        plan = self._plans.get(resource_type)
        if plan is None:
            plan = []
            for sp in self.registry.stored(resource_type):
                assert sp.expression is not None
                try:
                    plan.append((sp, compile_expression(sp.expression, resource_type)))
                except Exception:  # an expression fhirpathpy cannot compile: that parameter stays unindexed
                    log.warning("search parameter %s: cannot compile %r", sp.url, sp.expression)
            self._roots[resource_type] = [root_keys(sp.expression or "", resource_type) for sp, _ in plan]
            self._plans[resource_type] = plan
        return plan

    def extract(self, resource_type: str, resource_id: str, resource: dict[str, Any]) -> IndexRows:
        out = IndexRows()
        plan = self.plan(resource_type)
        found: dict[str, list[Any]] = {}  # values by parameter, for composites over the resource itself
        for (sp, evaluate), roots in zip(plan, self._roots[resource_type], strict=True):
            if roots is not None and roots.isdisjoint(resource.keys()):
                continue  # none of the elements the expression starts from is present
            try:
                values = evaluate(resource)
            except Exception:  # odd content must never fail the write; the parameter is just not indexed
                log.debug("search parameter %s failed on %s/%s", sp.code, resource_type, resource_id)
                continue
            if values:
                found[sp.code] = values
                self._rows(out, resource_type, resource_id, sp, values)
        for row in self.composites.rows(resource_type, resource_id, resource, out, found):  # composite.py
            out.add("composite", row)
        return out

    def add_rows(self, out: IndexRows, rtype: str, rid: str, sp: SearchParam, values: list[Any]) -> None:
        """The rows of one parameter's values (composite components are built the same way)."""
        self._rows(out, rtype, rid, sp, values)

    def _rows(self, out: IndexRows, rtype: str, rid: str, sp: SearchParam, values: list[Any]) -> None:
        key: dict[str, Any] = {"resource_type": rtype, "resource_id": rid, "param": sp.code}
        seen: set[tuple[Any, ...]] = set()

        def add(kind: str, param: str, **row: Any) -> None:
            ident = (kind, param, *row.values())
            if ident not in seen:
                seen.add(ident)
                out.add(kind, {**key, "param": param, **row})

        for value in values:
            value = _unwrap_extension(value)
            if sp.type == "string":
                for text in _strings(value):
                    add("string", sp.code, value_norm=normalize(text), value_exact=text,
                        hash_exact=hash64(rtype, sp.code, text))
            elif sp.type == "token":
                implied = implied_system(sp) if isinstance(value, str) else None  # a plain code's binding
                for param, system, code, label in _tokens(value, sp.code):
                    system = system or implied
                    add("token", param, system=system, code=code, text_norm=normalize(label) if label else None,
                        hash_value=hash64(rtype, param, code), hash_sys_value=hash64(rtype, param, system, code),
                        hash_sys=hash64(rtype, param, system))
            elif sp.type == "reference":
                self._reference(add, rtype, sp.code, value)
            elif sp.type == "date":
                for low, high in _dates(value):
                    add("date", sp.code, low=low, high=high)
            elif sp.type == "number":
                for number in _numbers(value):
                    add("number", sp.code, value=number)
            elif sp.type == "quantity":
                for number, system, code, unit in _quantities(value):
                    add("quantity", sp.code, value=number, system=system, code=code, unit=unit)
                    canon = ucum.canonical(number, code) if system == ucum.SYSTEM and code else None
                    if canon is not None:  # UCUM's canonical form beside the original (sql/number.py)
                        add("quantity", f"{sp.code}:canonical", value=canon[0], system=system, code=canon[1],
                            unit=None)
            elif sp.type == "uri" and isinstance(value, str):
                add("uri", sp.code, value=value, hash_uri=hash64(rtype, sp.code, value))

    def _reference(self, add: Any, rtype: str, code: str, value: Any) -> None:
        if isinstance(value, str):  # canonical / uri typed references
            parsed = parse_reference(value, self.base_url)
        elif isinstance(value, dict):
            text = value.get("reference")
            parsed = parse_reference(text, self.base_url) if isinstance(text, str) else None
            ident = value.get("identifier")
            if isinstance(ident, dict):
                param = f"{code}:identifier"
                for p, system, c, t in _tokens(ident, param):
                    if p == param:
                        add("token", p, system=system, code=c, text_norm=normalize(t) if t else None,
                            hash_value=hash64(rtype, p, c), hash_sys_value=hash64(rtype, p, system, c),
                            hash_sys=hash64(rtype, p, system))
        else:
            parsed = None
        if parsed is not None:
            target_type, target_id, url = parsed
            add("reference", code, target_type=target_type, target_id=target_id, target_url=url)


def _unwrap_extension(value: Any) -> Any:
    if isinstance(value, dict) and "url" in value and "resourceType" not in value:
        for key, item in value.items():
            if key.startswith("value") and len(key) > 5:
                return item
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, dict):
        for part in STRING_PARTS:
            item = value.get(part)
            if isinstance(item, str) and item:
                yield item
            elif isinstance(item, list):
                yield from (s for s in item if isinstance(s, str) and s)


def _tokens(value: Any, code: str) -> Iterator[tuple[str, str | None, str | None, str | None]]:
    """(param, system, code, text) rows of one token value."""
    if isinstance(value, bool):
        yield code, None, "true" if value else "false", None
    elif isinstance(value, str | int) and not isinstance(value, bool):
        yield code, None, str(value), None
    elif not isinstance(value, dict):
        return
    elif "coding" in value or ("text" in value and "value" not in value and "code" not in value):
        displays = set()
        for coding in value.get("coding") or []:
            if isinstance(coding, dict) and (coding.get("code") or coding.get("system")):
                display = coding.get("display")
                if isinstance(display, str):
                    displays.add(normalize(display))
                yield code, coding.get("system"), coding.get("code"), display
        # :text matches the text or any display; a text equal to a display (Synthea's, most v2 CWE) needs
        # no row of its own: the coding's row already answers it.
        text = value.get("text")
        if isinstance(text, str) and normalize(text) not in displays:
            yield code, None, None, text
    elif isinstance(value.get("value"), str):  # Identifier or ContactPoint
        system = value.get("system")
        if system in CONTACT_SYSTEMS and "type" not in value:
            yield code, None, value["value"], None
            return
        type_text = (value.get("type") or {}).get("text") if isinstance(value.get("type"), dict) else None
        yield code, system, value["value"], type_text
        for coding in (value.get("type") or {}).get("coding") or [] if isinstance(value.get("type"), dict) else []:
            if isinstance(coding, dict) and coding.get("code"):
                yield f"{code}:of-type", coding.get("system"), f"{coding['code']}|{value['value']}", None
    elif "code" in value or "system" in value:  # Coding (and Quantity-like codes)
        yield code, value.get("system"), value.get("code"), value.get("display")


def _dates(value: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(value, str):
        rng = date_range(value)
        if rng:
            yield rng
    elif isinstance(value, dict):
        if "start" in value or "end" in value:  # Period
            start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
            end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
            if start or end:
                yield (start[0] if start else MIN_INSTANT), (end[1] if end else MAX_INSTANT)
        elif "event" in value or "repeat" in value:  # Timing
            for event in value.get("event") or []:
                yield from _dates(event)
            bounds = (value.get("repeat") or {}).get("boundsPeriod")
            if bounds:
                yield from _dates(bounds)


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        yield float(value)
    elif isinstance(value, str):
        try:
            yield float(value)
        except ValueError:
            return
    elif isinstance(value, dict):
        if "value" in value:
            yield from _numbers(value["value"])
        for bound in ("low", "high"):
            if isinstance(value.get(bound), dict):
                yield from _numbers(value[bound])


def _quantities(value: Any) -> Iterator[tuple[float, str | None, str | None, str | None]]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        yield float(value), None, None, None
    elif isinstance(value, dict):
        number = value.get("value")
        if isinstance(number, int | float) and not isinstance(number, bool):
            if "currency" in value:  # Money
                yield float(number), ISO_4217, value["currency"], value["currency"]
            else:
                yield float(number), value.get("system"), value.get("code"), value.get("unit")
        for bound in ("low", "high"):  # Range
            if isinstance(value.get(bound), dict):
                yield from _quantities(value[bound])

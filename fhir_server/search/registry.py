"""The search parameter registry, generated from the official R4 SearchParameter definitions.

Every core parameter of every resource type comes from ``definitions/search-parameters`` (no hand-written
lists). A parameter defined on several bases (``clinical-patient``: 32 types) carries one FHIRPath union; the
registry keeps, per base type, only the union's parts that start with that type, so each type evaluates just
what applies to it. ``Resource`` and ``DomainResource`` parameters (``_tag``, ``_profile``, ...) join every
type they apply to. Parameters that repeat others' rows (unions such as ``combo-code``, composites on the
resource itself such as ``code-value-quantity``) are marked so they are searched through those rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from fhir_server.definitions import bundle_resources, resource_types

# Types that are Resources but not DomainResources (no text, contained, extension).
NOT_DOMAIN = {"Bundle", "Binary", "Parameters"}
# Parameters answered from the resource table itself, never indexed.
RESOURCE_COLUMNS = {"_id", "_lastUpdated"}
# Types whose values the index stores; composite and special parameters are not indexed (yet).
INDEXED_TYPES = {"string", "token", "reference", "date", "number", "quantity", "uri"}
# Parameters with their own predicate and no expression: full text (search/fulltext) and _list.
SPECIAL_CODES = {"_text", "_content", "_list"}
# search.html defines _list, but R4 ships no SearchParameter resource for it.
LIST_DEFINITION = {"resourceType": "SearchParameter", "url": "http://hl7.org/fhir/SearchParameter/Resource-list",
                   "code": "_list", "base": ["Resource"], "type": "special", "status": "active",
                   "description": "Resources that are entries of the List with this id (search.html#list)"}


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    url: str
    base: str  # the resource type this entry serves
    expression: str | None  # the union parts for ``base`` only
    targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # composite: (definition url, expression)
    description: str = ""
    # Codes of the parameters whose expressions' union is exactly this one's (``combo-code`` = ``code`` |
    # ``component-code``): it has no index rows of its own, a search on it is one on each of them.
    union_of: tuple[str, ...] = ()
    # A composite on the resource itself (``code-value-quantity``: element ``Observation``) whose components
    # are exactly other parameters: the codes of those, in component order. Same element = same resource, so
    # it has no rows of its own either: a search on it is its components' criteria ANDed.
    conjunction_of: tuple[str, ...] = ()

    @property
    def indexed(self) -> bool:
        return self.type in INDEXED_TYPES and bool(self.expression) and self.code not in RESOURCE_COLUMNS

    @property
    def supported(self) -> bool:
        """Searchable today: indexed parameters, those answered from the resource table, composites."""
        return (self.indexed or self.code in RESOURCE_COLUMNS or self.code in SPECIAL_CODES
                or (self.type == "composite" and bool(self.components)))


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath union ``a | b | c`` at the top level (not inside parentheses or string literals)."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(expression):
        if ch == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def parts_for(expression: str, resource_type: str) -> list[str]:
    """The union parts of ``expression`` that apply to ``resource_type``."""
    out = []
    for part in split_union(expression):
        head = part.lstrip("(")
        for generic in ("Resource.", "DomainResource."):
            if head.startswith(generic):
                part = part.replace(generic, f"{resource_type}.", 1)
                head = head.replace(generic, f"{resource_type}.", 1)
        if head.startswith(f"{resource_type}.") or head == resource_type:
            out.append(part)
    return out


@dataclass
class Registry:
    """Search parameters by resource type and code."""

    by_type: dict[str, dict[str, SearchParam]] = field(default_factory=dict)
    by_url: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 0  # bumped when runtime SearchParameters change it (extractor plans are cached per version)
    # types whose parameters' ``union_of`` / ``conjunction_of`` are worked out for their current definitions
    resolved: set[str] = field(default_factory=set)
    # (type, token parameter) -> its codes in sort order: ``_sort=priority`` ranks stat before routine
    # (a workflow area installs its order as data; without one a token sorts by its code's text).
    sort_orders: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def copy(self) -> Registry:
        return Registry({t: dict(p) for t, p in self.by_type.items()}, dict(self.by_url), self.version,
                        set(self.resolved), dict(self.sort_orders))

    def replace_with(self, other: Registry) -> None:
        """Take ``other``'s parameters (a reload of runtime SearchParameters); readers see old or new."""
        self.by_type, self.by_url, self.resolved = other.by_type, other.by_url, other.resolved
        self.version += 1

    def add_definition(self, sp: dict[str, Any]) -> None:
        """Add one SearchParameter resource (core or, later, created at runtime)."""
        bases = sp.get("base") or []
        types = resource_types()
        self.by_url[sp.get("url", "")] = sp
        for base in bases:
            if base == "Resource":
                applies = sorted(types)
            elif base == "DomainResource":
                applies = sorted(types - NOT_DOMAIN)
            elif base in types:
                applies = [base]
            else:
                continue
            for rtype in applies:
                self.resolved.discard(rtype)
                expr = sp.get("expression")
                parts = parts_for(expr, rtype) if expr else []
                self.by_type.setdefault(rtype, {})[sp["code"]] = SearchParam(
                    code=sp["code"], type=sp["type"], url=sp.get("url", ""), base=rtype,
                    expression=" | ".join(parts) or None, targets=tuple(sp.get("target") or ()),
                    components=tuple((c["definition"], c["expression"]) for c in sp.get("component") or ()),
                    description=sp.get("description", ""))

    def component(self, resource_type: str, definition: str) -> SearchParam | None:
        """A composite's component parameter, by its definition URL, as it applies to ``resource_type``."""
        sp = self.by_url.get(definition)
        return self.get(resource_type, sp["code"]) if sp else None

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.params(resource_type).get(code)

    def params(self, resource_type: str) -> dict[str, SearchParam]:
        if resource_type not in self.resolved:
            self._resolve(resource_type)
        return self.by_type.get(resource_type, {})

    def stored(self, resource_type: str) -> list[SearchParam]:
        """The indexed parameters that have index rows of their own (not unions of others)."""
        return [p for p in self.params(resource_type).values() if p.indexed and not p.union_of]

    def stored_composites(self, resource_type: str) -> list[SearchParam]:
        """The composites with rows of their own in ``search_composite``."""
        return [p for p in self.params(resource_type).values() if p.type == "composite" and p.components
                and p.expression and not p.union_of and not p.conjunction_of]

    def _resolve(self, resource_type: str) -> None:
        params = self.by_type.get(resource_type)
        if params is not None:
            unions = find_unions(params)
            conjunctions = find_conjunctions(resource_type, params, self.by_url)
            self.by_type[resource_type] = {
                code: replace(sp, union_of=unions.get(code, ()), conjunction_of=conjunctions.get(code, ()))
                for code, sp in params.items()}
        self.resolved.add(resource_type)

    def supported(self, resource_type: str) -> list[SearchParam]:
        return sorted((p for p in self.params(resource_type).values() if p.supported), key=lambda p: p.code)

    def capability_params(self, resource_type: str) -> list[dict[str, Any]]:
        """CapabilityStatement.rest.resource.searchParam for what this server really answers."""
        return [{"name": p.code, "definition": p.url, "type": p.type} for p in self.supported(resource_type)]


# Types whose unions are answered from their parts' rows; references stay stored (_include, _has,
# compartments and access filters read reference rows by parameter code directly).
UNION_TYPES = {"string", "token", "date", "number", "quantity", "uri", "composite"}


def find_unions(params: dict[str, SearchParam]) -> dict[str, tuple[str, ...]]:
    """Parameters whose FHIRPath union is exactly covered by other parameters' unions, of the same type
    (composites: the same component expressions), each with its covering parameters' codes.

    Observation's ``combo-*`` parameters (``Observation.code | Observation.component.code``) are the R4
    core cases: their rows would repeat those of ``code`` and ``component-code`` (a third of the rows of
    an Observation with a coded quantity value). Parameters are taken by growing union size, so covers are
    never unions themselves.
    """
    def shape(sp: SearchParam) -> tuple[Any, ...]:
        return sp.type, tuple(expression for _, expression in sp.components)

    def rows_of_own(sp: SearchParam) -> bool:
        return sp.type in UNION_TYPES and bool(sp.expression) and (sp.indexed or bool(sp.components))

    parts = {code: frozenset(split_union(sp.expression or "")) for code, sp in params.items() if rows_of_own(sp)}
    unions: dict[str, tuple[str, ...]] = {}
    for code in sorted(parts, key=lambda c: (len(parts[c]), c)):
        mine, sp = parts[code], params[code]
        if len(mine) < 2:
            continue
        cover = sorted(other for other, theirs in parts.items()
                       if len(theirs) < len(mine) and theirs <= mine and other not in unions
                       and shape(params[other]) == shape(sp))
        if cover and frozenset().union(*(parts[c] for c in cover)) == mine:
            unions[code] = tuple(cover)
    return unions


# Casts whose values the extractor never turns into rows of that type (extract._quantities: a SampledData
# has no value element), so a parameter's part with one adds nothing to its rows.
ROWLESS_CASTS = {"quantity": {"sampleddata"}}
_AS = re.compile(r"(.+?)\s+as\s+([A-Za-z]+)")


def normal_part(part: str, resource_type: str) -> str:
    """One FHIRPath union part in one spelling: outer parentheses off, ``x as T`` written ``x.as(T)``, type
    names in lower case, a path relative to an element (``value.as(Quantity)``) taken from the resource."""
    text = part.strip()
    while text.startswith("(") and text.endswith(")") and "(" not in text[1:-1] and ")" not in text[1:-1]:
        text = text[1:-1].strip()
    m = _AS.fullmatch(text)
    if m is not None and "(" not in m[1] and ")" not in m[1]:
        text = f"{m[1]}.as({m[2]})"
    text = re.sub(r"\.as\(([A-Za-z]+)\)", lambda c: f".as({c[1].lower()})", text)
    if text == resource_type or text.startswith((f"{resource_type}.", "(")):
        return text
    return f"{resource_type}.{text}"


def find_conjunctions(resource_type: str, params: dict[str, SearchParam],
                      by_url: dict[str, dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Composites on the resource itself whose every component is another stored parameter's expression
    (in another spelling: ``code`` is ``Observation.code``, ``value.as(CodeableConcept)`` is
    ``(Observation.value as CodeableConcept)``), with those parameters' codes. R4: Observation's
    ``code-value-concept``, ``code-value-date`` and ``code-value-quantity`` (not ``code-value-string``:
    ``value-string`` also holds a CodeableConcept's text)."""
    out: dict[str, tuple[str, ...]] = {}
    for code, sp in params.items():
        if sp.type != "composite" or not sp.components or split_union(sp.expression or "") != [resource_type]:
            continue
        codes = []
        for definition, relative in sp.components:
            component = params.get(str((by_url.get(definition) or {}).get("code")))
            if component is None or not component.indexed or component.type in ("composite", "reference"):
                break
            wanted = {normal_part(p, resource_type) for p in split_union(relative)}
            theirs = {normal_part(p, resource_type) for p in split_union(component.expression or "")}
            rowless = {p for p in theirs for t in ROWLESS_CASTS.get(component.type, ()) if p.endswith(f".as({t})")}
            if wanted != theirs - rowless:
                break
            codes.append(component.code)
        else:
            out[code] = tuple(codes)
    return out


@lru_cache(maxsize=1)
def core_registry() -> Registry:
    """The registry of all R4 core search parameters (built once per process)."""
    registry = Registry()
    for sp in bundle_resources("search-parameters", "SearchParameter"):
        registry.add_definition(sp)
    registry.add_definition(LIST_DEFINITION)
    return registry

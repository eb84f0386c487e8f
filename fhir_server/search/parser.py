"""Search query parsing (pure): ``[(name, value)]`` -> typed criteria, per search.html.

Comma separates OR values, a repeated parameter ANDs. Malformed values (bad date, bad prefix, bad number,
bad reference, unknown modifier) raise FhirError 400 naming the parameter; parameters this server does not
know or support are returned in ``Query.unknown`` so the caller can ignore-and-report or, with
``Prefer: handling=strict``, reject them. What a query may cost is bounded here (``SearchLimits``): too many
ANDed criteria or full-text words is a 400 naming the limit, before any SQL exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, NOT_SUPPORTED, TOO_COSTLY, FhirError, Issue
from fhir_server.search.fulltext.syntax import TextQuery, TextSyntaxError, parse_text
from fhir_server.search.registry import SPECIAL_CODES, Registry, SearchParam
from fhir_server.search.values import date_range

TEXT_CODES = ("_text", "_content")
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# Parameters that shape the result and never select resources.
RESULT_PARAMS = {"_count", "_sort", "_total", "_include", "_revinclude", "_summary", "_elements", "_format",
                 "_pretty", "_cursor", "_contained", "_containedType"}
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "missing", "in", "not-in", "above", "below"},
    "reference": {"missing", "identifier"},  # plus :[Type]
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "above", "below"},
    "composite": set(),
}
TERMINOLOGY_MODIFIERS = {"in", "not-in", "above", "below"}


@dataclass(frozen=True)
class SearchLimits:
    """What one search may ask for (FHIR_SEARCH_MAX_*): each further criterion or word is another join or
    tsquery node, and a few hundred of them took PostgreSQL minutes (or past its stack depth)."""

    max_and_params: int = 20  # criteria ANDed in one search: every parameter occurrence counts
    max_or_values: int = 100  # comma-separated values ORed in one parameter
    max_sort_keys: int = 5  # keys in _sort
    max_text_words: int = 50  # words in the _text and _content values of one search, together
    timeout_seconds: float = 5.0  # a search's database work stops after this (0: never; storage/interrupt.py)


DEFAULT_LIMITS = SearchLimits()
NUL = "\x00"


@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code (``system|``)


@dataclass(frozen=True)
class RangeValue:
    """A date, number or quantity value: its prefix and the implicit range of its precision."""

    prefix: str
    low: datetime | Decimal
    high: datetime | Decimal
    value: datetime | Decimal
    system: str | None = None  # quantity only
    code: str | None = None


@dataclass(frozen=True)
class ReferenceValue:
    type: str | None
    id: str | None
    url: str | None = None


@dataclass(frozen=True)
class CompositeValue:
    """``a$b``: one single-valued criterion per component, all to hold on the same resource."""

    parts: tuple[Criterion, ...]


Value = str | TokenValue | RangeValue | ReferenceValue | bool | CompositeValue | TextQuery


@dataclass
class Criterion:
    """One parameter occurrence: values ORed; several criteria are ANDed."""

    name: str
    param: SearchParam
    modifier: str | None
    values: list[Value]
    chain: list[Criterion] = field(default_factory=list)  # reference chaining: criteria on the target
    chain_types: tuple[str, ...] = ()


@dataclass
class HasCriterion:
    """``_has:Type:ref:criterion`` — resources referenced by a ``Type`` matching ``criterion``."""

    source_type: str
    ref_param: str
    inner: Criterion | HasCriterion


@dataclass(frozen=True)
class CompartmentCriterion:
    """Membership of ``compartment/compartment_id`` through any of ``params`` (or being it, ``itself``)."""

    compartment: str
    compartment_id: str
    params: tuple[str, ...]
    itself: bool = False


AnyCriterion = Criterion | HasCriterion | CompartmentCriterion


@dataclass
class Query:
    resource_type: str
    criteria: list[AnyCriterion] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (parameter, reason)
    control: list[tuple[str, str]] = field(default_factory=list)


def bad(name: str, message: str, code: str = INVALID) -> FhirError:
    return FhirError(400, [Issue(code, message, expression=(name,))])


def split_raw(text: str, sep: str) -> list[str]:
    """Split at unescaped ``sep``, keeping escapes (search.html#escaping: ``\\,`` ``\\|`` ``\\$`` ``\\\\``)."""
    if "\\" not in text:  # nothing escaped (nearly every value): the plain split, without a loop in Python
        return text.split(sep)
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _split_token(text: str) -> list[str]:
    return [unescape(p) for p in split_raw(text, "|")]


def parse_query(registry: Registry, resource_type: str, params: list[tuple[str, str]], *,
                base_url: str = "", limits: SearchLimits = DEFAULT_LIMITS) -> Query:
    """Parse a search; absolute references to ``base_url`` (this server) become local ``Type/id``."""
    query = Query(resource_type)
    for name, value in params:
        if NUL in name or NUL in value:  # no FHIR string holds U+0000 (and PostgreSQL cannot compare one)
            shown = name.replace(NUL, "\\u0000")
            raise bad(shown, f"The search parameter '{shown}' holds U+0000 (NUL), which no FHIR value may hold")
        if name.split(":", 1)[0] in RESULT_PARAMS:
            query.control.append((name, value))
            continue
        if base_url and f"{base_url.rstrip('/')}/" in value:
            value = value.replace(f"{base_url.rstrip('/')}/", "")
        if len(split_raw(value, ",")) > limits.max_or_values:
            raise _too_costly(name, f"'{name}' has more than {limits.max_or_values} values ORed "
                                    "(FHIR_SEARCH_MAX_OR_VALUES)")
        criterion = parse_criterion(registry, resource_type, name, value, query.unknown)
        if criterion is not None:
            query.criteria.append(criterion)
            if len(query.criteria) > limits.max_and_params:
                raise _too_costly(name, f"A search may AND at most {limits.max_and_params} criteria "
                                        "(FHIR_SEARCH_MAX_AND_PARAMS); every parameter occurrence counts")
    words = sum(len(t.words) for c in query.criteria if isinstance(c, Criterion) and c.param.code in TEXT_CODES
                for q in c.values if isinstance(q, TextQuery) for group in q.any_of for t in group)
    if words > limits.max_text_words:
        names = sorted({c.name for c in query.criteria if isinstance(c, Criterion) and c.param.code in TEXT_CODES})
        raise _too_costly(names[0], f"_text and _content may hold at most {limits.max_text_words} words in one "
                                    f"search (FHIR_SEARCH_MAX_TEXT_WORDS), not {words}")
    return query


def _too_costly(name: str, message: str) -> FhirError:
    return FhirError(400, [Issue(TOO_COSTLY, message, expression=(name,))])


def parse_criterion(registry: Registry, rtype: str, name: str, value: str,
                    unknown: list[tuple[str, str]]) -> Criterion | HasCriterion | None:
    if name.startswith("_has:"):
        return _parse_has(registry, rtype, name, value, unknown)
    head, _, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    sp = registry.get(rtype, code)
    if sp is None:
        unknown.append((name, f"Unknown search parameter '{code}' for {rtype}"))
        return None
    if not sp.supported:
        unknown.append((name, f"Search parameter '{code}' ({sp.type}) is not supported yet"))
        return None
    mod = modifier or None
    if code in SPECIAL_CODES:
        return _parse_special(sp, name, mod, rest, value)
    if rest:  # chaining: subject.name, subject:Patient.name
        if sp.type != "reference":
            raise bad(name, f"Parameter '{code}' is not a reference and cannot be chained")
        types = _target_types(sp, name, mod)
        chain: list[Criterion] = []
        chained_types = []
        for target in types:
            sub = parse_criterion(registry, target, rest, value, [])
            if sub is not None:
                assert isinstance(sub, Criterion)
                chain.append(sub)
                chained_types.append(target)
        if not chain:
            unknown.append((name, f"Chained parameter '{rest}' is not known on {', '.join(types)}"))
            return None
        return Criterion(name, sp, None, [], chain=chain, chain_types=tuple(chained_types))
    if mod is not None:
        _check_modifier(sp, name, mod)
    if mod == "missing":
        if value not in ("true", "false"):
            raise bad(name, f"':missing' takes true or false, not {value!r}")
        return Criterion(name, sp, mod, [value == "true"])
    if sp.type == "composite":
        return Criterion(name, sp, mod, [_parse_composite(registry, rtype, sp, name, v)
                                         for v in split_raw(value, ",")])
    values = [_parse_value(sp, name, mod, v) for v in split_raw(value, ",")]
    if mod is not None and sp.type == "reference" and mod not in ("identifier",):
        values = [ReferenceValue(mod, v.id, None) if isinstance(v, ReferenceValue) and v.type in (None, mod)
                  else _raise_type(name, mod, v) for v in values]
        mod = None
    return Criterion(name, sp, mod, values)


def _parse_special(sp: SearchParam, name: str, mod: str | None, rest: str, value: str) -> Criterion:
    """``_text`` / ``_content`` (full-text syntax) and ``_list`` (List ids); neither takes a modifier."""
    if mod is not None or rest:
        raise bad(name, f"'{sp.code}' takes no modifier or chain", NOT_SUPPORTED)
    raw = [unescape(v).strip() for v in split_raw(value, ",")]
    if sp.code == "_list":
        for v in raw:
            if v.startswith("$"):
                raise bad(name, f"Functional list {v!r} is not supported; give the id of a List", NOT_SUPPORTED)
            if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", v):
                raise bad(name, f"_list takes the id of a List, not {v!r}")
        return Criterion(name, sp, None, list(raw))
    try:
        return Criterion(name, sp, None, [parse_text(v) for v in raw])
    except TextSyntaxError as exc:
        raise bad(name, f"Bad full-text search {value!r}: {exc}") from None


def _parse_composite(registry: Registry, rtype: str, sp: SearchParam, name: str, text: str) -> CompositeValue:
    pieces = split_raw(text, "$")
    if len(pieces) != len(sp.components):
        raise bad(name, f"'{sp.code}' takes {len(sp.components)} values joined by '$', not {text!r}")
    parts = []
    for (definition, _), piece in zip(sp.components, pieces, strict=True):
        component = registry.component(rtype, definition)
        if component is None or not component.indexed:
            raise bad(name, f"Component {definition} of '{sp.code}' is not searchable", NOT_SUPPORTED)
        parts.append(Criterion(name, component, None, [_parse_value(component, name, None, piece)]))
    return CompositeValue(tuple(parts))


def _raise_type(name: str, mod: str, value: Value) -> Value:
    raise bad(name, f"Reference value {value!r} does not match the type modifier ':{mod}'")


def _target_types(sp: SearchParam, name: str, mod: str | None) -> list[str]:
    if mod is not None:
        if mod not in resource_types():
            raise bad(name, f"Unknown resource type '{mod}' in chained parameter")
        return [mod]
    return [t for t in sp.targets if t in resource_types()]


def _check_modifier(sp: SearchParam, name: str, mod: str) -> None:
    allowed = MODIFIERS.get(sp.type, set())
    if mod in allowed:
        return
    if sp.type == "reference" and mod in resource_types():
        if sp.targets and mod not in sp.targets:
            raise bad(name, f"Parameter '{sp.code}' cannot refer to {mod} (targets: {', '.join(sp.targets)})")
        return
    if sp.code == "_id" and mod in ("not", "missing"):
        return
    raise bad(name, f"Unknown modifier ':{mod}' for {sp.type} parameter '{sp.code}'")


def _parse_has(registry: Registry, rtype: str, name: str, value: str,
               unknown: list[tuple[str, str]]) -> HasCriterion | None:
    parts = name.split(":", 3)
    if len(parts) < 4 or not all(parts[1:]):
        raise bad(name, "_has takes the form _has:Type:reference:parameter")
    _, source, ref, rest = parts
    if source not in resource_types():
        raise bad(name, f"Unknown resource type '{source}' in _has")
    ref_sp = registry.get(source, ref)
    if ref_sp is None or ref_sp.type != "reference":
        raise bad(name, f"'{ref}' is not a reference parameter of {source}")
    inner = parse_criterion(registry, source, rest, value, unknown)
    if inner is None:
        return None
    return HasCriterion(source, ref, inner)


def _parse_value(sp: SearchParam, name: str, mod: str | None, text: str) -> Value:
    kind = sp.type
    if sp.code == "_id" or (kind == "token" and mod in (None, "not", "of-type", "above", "below")):
        if sp.code == "_id":
            return TokenValue(None, unescape(text))
        parts = _split_token(text)
        if mod == "of-type":
            if len(parts) != 3 or not all(parts):
                raise bad(name, f"':of-type' takes system|code|value, not {text!r}")
            return TokenValue(parts[0], f"{parts[1]}|{parts[2]}")
        if len(parts) == 1:
            return TokenValue(None, parts[0])
        return TokenValue(parts[0], parts[1] or None) if parts[0] else TokenValue("", parts[1])
    if kind == "token" or kind == "string" or kind == "uri":
        return unescape(text)
    if kind == "date":
        return parse_date(name, unescape(text))
    if kind in ("number", "quantity"):
        return parse_number(name, text, quantity=kind == "quantity")
    if kind == "reference":
        if mod == "identifier":
            parts = _split_token(text)
            return TokenValue(None, parts[0]) if len(parts) == 1 else TokenValue(parts[0], parts[1] or None)
        return parse_reference_value(name, unescape(text))
    raise bad(name, f"Search parameter type {kind} is not supported", NOT_SUPPORTED)


def _prefix(name: str, text: str) -> tuple[str, str]:
    m = re.match(r"^([a-z]{2})(?=[\d\-+.])", text)
    if m:
        if m.group(1) not in PREFIXES:
            raise bad(name, f"Unknown prefix '{m.group(1)}' in {text!r}")
        return m.group(1), text[2:]
    if text[:1].isalpha():
        raise bad(name, f"Bad prefix or value {text!r}")
    return "eq", text


def parse_date(name: str, text: str) -> RangeValue:
    prefix, rest = _prefix(name, text)
    rng = date_range(rest) if rest else None
    if rng is None:
        raise bad(name, f"{rest!r} is not a valid date/dateTime search value")
    return RangeValue(prefix, rng[0], rng[1], rng[0])


def parse_number(name: str, text: str, *, quantity: bool = False) -> RangeValue:
    prefix, rest = _prefix(name, text)
    system = code = None
    if quantity and "|" in rest:
        parts = _split_token(rest)
        if len(parts) != 3:
            raise bad(name, f"A quantity is number|system|code, not {text!r}")
        rest, system, code = parts[0], parts[1] or None, parts[2] or None
    try:
        number = Decimal(rest)
    except InvalidOperation:
        raise bad(name, f"{rest!r} is not a number") from None
    if not number.is_finite():
        raise bad(name, f"{rest!r} is not a number")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5) * Decimal(10) ** (exponent - 1)  # implicit precision: 100 -> [99.5, 100.5)
    return RangeValue(prefix, number - half, number + half, number, system, code)


def parse_reference_value(name: str, text: str) -> ReferenceValue:
    if not text:
        raise bad(name, "Empty reference")
    if "://" in text:
        segments = text.split("/")
        if len(segments) >= 2 and segments[-2] in resource_types():
            return ReferenceValue(segments[-2], segments[-1], text)
        return ReferenceValue(None, None, text)
    segments = text.split("/")
    if len(segments) >= 4 and segments[-2] == "_history":
        segments = segments[:-2]
    if len(segments) == 1:
        return ReferenceValue(None, segments[0])
    if len(segments) == 2 and segments[0] in resource_types() and segments[1]:
        return ReferenceValue(segments[0], segments[1])
    raise bad(name, f"Bad reference {text!r}: expected id, Type/id or an absolute URL")

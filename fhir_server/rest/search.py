"""Search (search.html): type level (GET ``Type?...``, POST ``Type/_search`` with a form body), compartment
(``Patient/123/Observation``) and system level (``?_type=A,B``).

Criteria are parsed by ``fhir_server.search.parser`` and run by the SearchFinder on the index tables.
Result shaping here: ``_count``, ``_sort``, ``_total``, cursor paging (self/next links), ``_include`` /
``_revinclude`` (with ``:iterate`` and ``*``), ``_summary``, ``_elements``. Unknown parameters are ignored and
reported in an OperationOutcome entry, or rejected with ``Prefer: handling=strict``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import and_, or_, select

from fhir_server.definitions import resource_types
from fhir_server.errors import FORBIDDEN, INVALID, NOT_SUPPORTED, FhirError, Issue, operation_outcome
from fhir_server.rest.history import parse_count
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.search.access import check_criteria, check_include, readable, refuse_masked
from fhir_server.search.compartment import compartment_criterion
from fhir_server.search.finder import SearchFinder, parse_sort
from fhir_server.search.parser import AnyCriterion, parse_query
from fhir_server.search.registry import core_registry
from fhir_server.search.summary import check_summary, shape
from fhir_server.search.tables import REFERENCE
from fhir_server.storage.interrupt import bounded
from fhir_server.storage.repository import Repository, Version, instant

MAX_INCLUDED = 1000  # included resources per page
MAX_ITERATIONS = 4  # rounds of :iterate
TOTAL_MODES = {"none", "estimate", "accurate"}
# Result parameters accepted but not applied yet (reported as ignored).
NOT_APPLIED = {"_contained", "_containedType"}


def finder_of(repo: Repository, req: FhirRequest) -> SearchFinder:
    finder = repo.finder
    return finder if isinstance(finder, SearchFinder) else SearchFinder(core_registry(), req.base_url)


def search_params(req: FhirRequest, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """URL query plus, for POST _search, the form body (search.html#Introduction)."""
    if req.method != "POST":
        return list(params)
    if req.body and req.content_type not in ("application/x-www-form-urlencoded", ""):
        raise FhirError(415, INVALID, "POST _search takes an application/x-www-form-urlencoded body")
    body = parse_qsl((req.body or b"").decode(), keep_blank_values=True)
    return [*params, *body]


def search_type(req: FhirRequest, repo: Repository, resource_type: str, params: list[tuple[str, str]], *,
                default_count: int, max_count: int) -> FhirResponse:
    return _search(req, repo, [resource_type], resource_type, params, [], default_count, max_count)


def search_compartment(req: FhirRequest, repo: Repository, compartment: str, compartment_id: str,
                       resource_type: str, params: list[tuple[str, str]], *, default_count: int,
                       max_count: int) -> FhirResponse:
    """``GET [base]/Patient/123/Observation?...``: a type search within one compartment."""
    check = compartment_criterion(compartment, compartment_id, resource_type)
    return _search(req, repo, [resource_type], f"{compartment}/{compartment_id}/{resource_type}", params, [check],
                   default_count, max_count)


def search_system(req: FhirRequest, repo: Repository, params: list[tuple[str, str]], *, default_count: int,
                  max_count: int) -> FhirResponse:
    """``GET [base]?_type=Patient,Observation&...``: the listed types, paged together."""
    params = search_params(req, params)
    types = [t.strip() for k, v in params if k == "_type" for t in v.split(",") if t.strip()]
    if not types:
        raise FhirError(400, INVALID, "System-level search needs _type (e.g. _type=Patient,Observation)", ("_type",))
    unknown = [t for t in types if t not in resource_types()]
    if unknown:
        raise FhirError(400, INVALID, f"Unknown resource type(s) in _type: {', '.join(unknown)}", ("_type",))
    rest = [(k, v) for k, v in params if k != "_type"]
    return _search(req, repo, list(dict.fromkeys(types)), "", rest, [], default_count, max_count,
                   extra_link=[("_type", ",".join(dict.fromkeys(types)))], already_merged=True)


def search_types(req: FhirRequest, repo: Repository, path: str, params: list[tuple[str, str]],
                 extra: dict[str, list[AnyCriterion]], *, default_count: int, max_count: int) -> FhirResponse:
    """Several types paged together, each with its own fixed criteria (``Patient/1/$everything``: every
    compartment member type with its compartment criterion); types the token never reads are left out."""
    types = [t for t in extra if readable(repo.access, t)]
    if not types:
        raise FhirError(403, FORBIDDEN, "The access token permits none of these resource types", (path,))
    return _search(req, repo, types, path, params, extra, default_count, max_count, already_merged=True)


def _search(req: FhirRequest, repo: Repository, types: list[str], path: str, params: list[tuple[str, str]],
            extra: list[AnyCriterion] | dict[str, list[AnyCriterion]], default_count: int, max_count: int, *,
            extra_link: list[tuple[str, str]] | None = None, already_merged: bool = False) -> FhirResponse:
    finder = finder_of(repo, req)
    # Its statements stop at FHIR_SEARCH_TIMEOUT_SECONDS, or when the client disconnects (storage/interrupt.py).
    with bounded(repo.conn, finder.limits.timeout_seconds):
        return _search_bounded(req, repo, finder, types, path, params, extra, default_count, max_count,
                               extra_link=extra_link, already_merged=already_merged)


def _search_bounded(req: FhirRequest, repo: Repository, finder: SearchFinder, types: list[str], path: str,
                    params: list[tuple[str, str]], extra: list[AnyCriterion] | dict[str, list[AnyCriterion]],
                    default_count: int, max_count: int, *, extra_link: list[tuple[str, str]] | None,
                    already_merged: bool) -> FhirResponse:
    params = params if already_merged else search_params(req, params)
    allowed = [t for t in types if readable(repo.access, t)]  # auth: types the token never reads
    if not allowed:
        raise FhirError(403, FORBIDDEN, f"The access token does not permit searching {', '.join(types)}",
                        ("_type",) if path == "" else (types[0],))
    types = allowed
    queries = [parse_query(finder.registry, t, params, base_url=req.base_url, limits=finder.limits)
               for t in types]
    for q in queries:  # auth: a criterion reaching a type the token may not search is refused, not emptied
        check_criteria(repo.access, q.criteria)
    unknown: dict[str, str] = {}
    for q in queries:
        unknown.update(dict(q.unknown))
    if len(queries) > 1 and unknown:  # a parameter some types lack is ignored for all, never half-applied
        known = [(k, v) for k, v in params if k not in unknown]
        queries = [parse_query(finder.registry, t, known, base_url=req.base_url, limits=finder.limits)
                   for t in types]
    control: dict[str, list[str]] = {}

    def last(name: str, default: str | None = None) -> str | None:
        values = control.get(name)
        return values[-1] if values else default

    for name, value in queries[0].control:
        control.setdefault(name, []).append(value)
    ignored = list(unknown.items()) + [(n, f"'{n}' is not applied yet") for n in control if n in NOT_APPLIED]
    summary = check_summary(last("_summary"))
    elements = [e.strip() for v in control.get("_elements", []) for e in v.split(",") if e.strip()] or None
    if ignored and (req.prefer("handling") or "").lower() == "strict":
        raise FhirError(400, [Issue(NOT_SUPPORTED, reason, expression=(name,)) for name, reason in ignored])

    count = parse_count(last("_count"), default_count, max_count)
    total_mode = last("_total", "none")
    if total_mode not in TOTAL_MODES:
        raise FhirError(400, INVALID, f"_total must be one of none, estimate, accurate (not {total_mode!r})",
                        ("_total",))
    sorts = [parse_sort(finder.registry, t, ",".join(control.get("_sort", [])), finder.limits) for t in types]
    if len({tuple(k.param.type for k in s) for s in sorts}) > 1:
        raise FhirError(400, INVALID, "_sort keys must have the same type in every _type", ("_sort",))
    cursor = last("_cursor")
    include_specs = _include_specs(repo, finder, control)
    criteria = [[*(extra.get(t, []) if isinstance(extra, dict) else extra), *q.criteria]
                for t, q in zip(types, queries, strict=True)]

    def total(estimate: bool = False) -> int:
        return sum(finder.total(repo, t, c, estimate=estimate) for t, c in zip(types, criteria, strict=True))

    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "meta": {"lastUpdated": instant(datetime.now(UTC))}}
    entries: list[dict[str, Any]] = []
    # Links state the page size actually used (the default, or a _count capped at the maximum).
    used = [*(extra_link or []), *((k, v) for k, v in params if k not in ("_cursor", "_count") and k not in unknown),
            ("_count", str(count))]
    links = [{"relation": "self", "url": _url(req, path, [*used, *([("_cursor", cursor)] if cursor else [])])}]
    if summary == "count":
        bundle["total"] = total()
    elif count > 0:
        if len(types) == 1:
            page = finder.page(repo, types[0], criteria[0], sorts[0], count, cursor)
            refs, next_cursor = [(types[0], i) for i in page.ids], page.next_cursor
        else:
            refs, next_cursor = finder.page_types(repo, list(zip(types, criteria, sorts, strict=True)), count, cursor)
        found = {(v.resource_type, v.id): v for v in repo.read_many(refs)}
        matches = [found[ref] for ref in refs if ref in found]
        entries = [_entry(req, v, "match", summary, elements) for v in matches]
        entries += [_entry(req, v, "include", summary, elements)
                    for v in _includes(repo, finder, matches, include_specs)]
        if next_cursor:
            links.append({"relation": "next", "url": _url(req, path, [*used, ("_cursor", next_cursor)])})
        if total_mode != "none":
            bundle["total"] = total(total_mode == "estimate")
        elif cursor is None and next_cursor is None:
            bundle["total"] = len(matches)  # the whole result is on this page: the count is free
    else:  # _count=0: R4 search.html treats it as _summary=count, so the total is the answer
        bundle["total"] = total(total_mode == "estimate")
    if ignored:
        entries.append({"resource": operation_outcome([
            Issue(NOT_SUPPORTED, f"{reason}; ignored", severity="warning", expression=(name,))
            for name, reason in ignored]), "search": {"mode": "outcome"}})
    bundle["link"] = links
    bundle["entry"] = entries
    return FhirResponse(200, bundle)


def _entry(req: FhirRequest, v: Version, mode: str, summary: str | None = None,
           elements: list[str] | None = None) -> dict[str, Any]:
    content = shape(v.content, summary, elements) if v.content is not None else None
    return {"fullUrl": f"{req.base_url}/{v.resource_type}/{v.id}", "resource": content, "search": {"mode": mode}}


def _url(req: FhirRequest, path: str, query: list[tuple[str, str]]) -> str:
    qs = urlencode(query)
    return f"{req.base_url}/{path}".rstrip("/") + (f"?{qs}" if qs else "")


def _parse_include(finder: SearchFinder, name: str, spec: str) -> tuple[str, str | None, str | None]:
    """``Source:param[:Target]`` or ``*`` -> (source, param or None for all, target)."""
    if spec == "*":
        return "*", None, None
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in resource_types():
        raise FhirError(400, INVALID, f"{name} takes Type:parameter[:TargetType], not {spec!r}", (name,))
    source, param = parts[0], parts[1]
    if param != "*":
        sp = finder.registry.get(source, param)
        if sp is None or sp.type != "reference":
            raise FhirError(400, INVALID, f"'{param}' is not a reference parameter of {source}", (name,))
    target = parts[2] if len(parts) == 3 else None
    if target is not None and target not in resource_types():
        raise FhirError(400, INVALID, f"Unknown target type {target!r} in {name}", (name,))
    return source, None if param == "*" else param, target


IncludeSpec = tuple[bool, bool, tuple[str, str | None, str | None]]  # (reverse, iterate, (source, param, target))


def _include_specs(repo: Repository, finder: SearchFinder, control: dict[str, list[str]]) -> list[IncludeSpec]:
    """The ``_include``/``_revinclude`` parameters, checked up front: one naming a type the token may not
    search is a 403 whatever the page holds (never an empty answer some tokens get and others not)."""
    specs: list[IncludeSpec] = []
    for name in ("_include", "_revinclude", "_include:iterate", "_revinclude:iterate",
                 "_include:recurse", "_revinclude:recurse"):
        for value in control.get(name, []):
            spec = _parse_include(finder, name, value)
            reverse = name.startswith("_rev")
            if spec[0] != "*":
                sp = finder.registry.get(spec[0], spec[1]) if spec[1] else None
                targets = (spec[2],) if spec[2] else tuple(t for t in (sp.targets if sp else ())
                                                           if t in resource_types())
                check_include(repo.access, name, reverse, spec[0], targets)
            specs.append((reverse, ":" in name, spec))
    return specs


def _includes(repo: Repository, finder: SearchFinder, matches: list[Version],
              specs: list[IncludeSpec]) -> list[Version]:
    if not specs or not matches:
        return []
    for _reverse, _iterate, (source, param, _target) in specs:  # auth: not through references a role mask hides
        if param is not None:
            sp = finder.registry.get(source, param)
            if sp is not None:
                refuse_masked(repo.access, source, sp)
        elif any(repo.access.masks(t) for t in (
                {v.resource_type for v in matches} if source == "*" else {source})):
            raise FhirError(403, FORBIDDEN, f"{source}:* includes references this user's role does not see; "
                                            "name the search parameter", ("_include",))
    seen = {(v.resource_type, v.id) for v in matches}
    included: list[Version] = []
    frontier = list(matches)
    for round_ in range(MAX_ITERATIONS + 1):
        refs: set[tuple[str, str]] = set()
        for reverse, iterate, spec in specs:
            if round_ > 0 and not iterate:
                continue
            refs |= _revinclude_refs(repo, spec, frontier) if reverse else _include_refs(repo, spec, frontier)
        # auth: only what the token may read, checked in SQL before the page's include budget is spent
        new = sorted(finder.visible(repo, sorted(r for r in refs if r not in seen)))[:MAX_INCLUDED - len(included)]
        if not new:
            break
        seen.update(new)
        frontier = repo.read_many(new)
        included += frontier
        if len(included) >= MAX_INCLUDED:
            break
    return included


def _include_refs(repo: Repository, spec: tuple[str, str | None, str | None],
                  sources: list[Version]) -> set[tuple[str, str]]:
    source, param, target = spec
    conds = []
    by_type: dict[str, list[str]] = {}
    for v in sources:
        if source in ("*", v.resource_type):
            by_type.setdefault(v.resource_type, []).append(v.id)
    for rtype, ids in by_type.items():
        conds.append(and_(REFERENCE.c.resource_type == rtype, REFERENCE.c.resource_id.in_(ids)))
    if not conds:
        return set()
    stmt = select(REFERENCE.c.target_type, REFERENCE.c.target_id).where(
        or_(*conds), REFERENCE.c.target_type.is_not(None), REFERENCE.c.target_url.is_(None))
    if param is not None:
        stmt = stmt.where(REFERENCE.c.param == param)
    if target is not None:
        stmt = stmt.where(REFERENCE.c.target_type == target)
    return {(r.target_type, r.target_id) for r in repo.conn.execute(stmt.limit(MAX_INCLUDED * 2))}


def _revinclude_refs(repo: Repository, spec: tuple[str, str | None, str | None],
                     targets: list[Version]) -> set[tuple[str, str]]:
    source, param, target = spec
    if source == "*":
        return set()
    conds = []
    by_type: dict[str, list[str]] = {}
    for v in targets:
        if target in (None, v.resource_type):
            by_type.setdefault(v.resource_type, []).append(v.id)
    for rtype, ids in by_type.items():
        conds.append(and_(REFERENCE.c.target_type == rtype, REFERENCE.c.target_id.in_(ids)))
    if not conds:
        return set()
    stmt = select(REFERENCE.c.resource_id).where(REFERENCE.c.resource_type == source, or_(*conds),
                                                 REFERENCE.c.target_url.is_(None))
    if param is not None:
        stmt = stmt.where(REFERENCE.c.param == param)
    return {(source, r.resource_id) for r in repo.conn.execute(stmt.limit(MAX_INCLUDED * 2))}

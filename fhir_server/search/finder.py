"""SearchFinder: runs parsed searches on the index, for conditional interactions and the search API.

All reads go through the per-request Repository's connection (``repo.conn``), so the access policy that
will be applied there covers searches too.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import and_, exists, func, literal, select, union_all

from fhir_server.errors import INVALID, NOT_SUPPORTED, TOO_COSTLY, FhirError, Issue
from fhir_server.search.parser import DEFAULT_LIMITS, AnyCriterion, SearchLimits, parse_query
from fhir_server.search.registry import SPECIAL_CODES, Registry
from fhir_server.search.sql import SqlContext, conditions, driver
from fhir_server.search.sql.sort import SortKey, after_cursor, order_by, sort_expression
from fhir_server.search.terms import resolve as resolve_terms
from fhir_server.storage.models import RESOURCE

if TYPE_CHECKING:
    from fhir_server.search.fulltext import FullTextIndex
    from fhir_server.storage.repository import Repository


@dataclass
class Page:
    ids: list[str]
    next_cursor: str | None


def encode_cursor(values: list[Any], last_id: str) -> str:
    data = [{"t": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps([data, last_id])).decode().rstrip("=")


def decode_cursor(text: str, n: int) -> tuple[list[Any], str]:
    try:
        data, last_id = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        values = [datetime.fromisoformat(v["t"]) if isinstance(v, dict) else v for v in data]
        if len(values) != n or not isinstance(last_id, str):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise FhirError(400, INVALID, "The paging cursor is not valid for this search", ("_cursor",)) from None
    return values, last_id


def parse_sort(registry: Registry, rtype: str, text: str | None,
               limits: SearchLimits = DEFAULT_LIMITS) -> list[SortKey]:
    keys: list[SortKey] = []
    raws = (text or "").split(",")
    if len(raws) > limits.max_sort_keys:  # each key is one more ORDER BY expression over the whole match
        raise FhirError(400, [Issue(TOO_COSTLY, f"_sort may have at most {limits.max_sort_keys} keys "
                                               f"(FHIR_SEARCH_MAX_SORT_KEYS), not {len(raws)}", expression=("_sort",))])
    for raw in raws:
        code = raw.strip()
        if not code:
            continue
        desc = code.startswith("-")
        code = code.lstrip("-")
        sp = registry.get(rtype, code)
        # a composite has no single value to sort by; _text/_content/_list none at all
        if sp is None or not sp.supported or sp.type == "composite" or sp.code in SPECIAL_CODES:
            raise FhirError(400, [Issue(NOT_SUPPORTED, f"Cannot sort {rtype} by '{code}'", expression=("_sort",))])
        keys.append(SortKey(sp, desc, registry.sort_orders.get((rtype, sp.code), ())))
    return keys


class SearchFinder:
    def __init__(self, registry: Registry, base_url: str = "", limits: SearchLimits = DEFAULT_LIMITS) -> None:
        self.registry = registry
        self.base_url = base_url
        self.fulltext: FullTextIndex | None = None  # _text / _content (search/services.py sets it)
        self.limits = limits  # what one search may ask for (FHIR_SEARCH_MAX_*)

    def context(self, repo: Repository) -> SqlContext:
        """The SQL context of one request: its token's access restriction goes into every query."""
        return SqlContext(self.registry, self.base_url, access=repo.access, fulltext=self.fulltext)

    def visible(self, repo: Repository, refs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (type, id) pairs that exist and the token may read, checked in SQL (_include, _revinclude)."""
        by_type: dict[str, list[str]] = {}
        for rtype, rid in refs:
            by_type.setdefault(rtype, []).append(rid)
        out: list[tuple[str, str]] = []
        r = RESOURCE
        for rtype, ids in by_type.items():
            for start in range(0, len(ids), 500):
                conds = conditions(self.context(repo), r, rtype, [])
                rows = repo.execute(select(r.c.id).where(*conds, r.c.id.in_(ids[start:start + 500])))
                out += [(rtype, row.id) for row in rows]
        return out

    def find_ids(self, repo: Repository, resource_type: str, params: list[tuple[str, str]], *,
                 limit: int = 50, after: str | None = None) -> list[str]:
        """Conditional interactions: every criterion must be understood (never ignore one and match more)."""
        query = parse_query(self.registry, resource_type, params, base_url=self.base_url, limits=self.limits)
        if query.unknown:
            raise FhirError(400, [Issue(NOT_SUPPORTED, reason, expression=(name,)) for name, reason in query.unknown])
        repo.flush()  # index rows deferred earlier in this transaction must be visible
        resolve_terms(repo, query.criteria)
        r = RESOURCE
        conds = conditions(self.context(repo), r, resource_type, query.criteria)
        if after is not None:
            conds.append(r.c.id > after)
        rows = repo.conn.execute(select(r.c.id).where(and_(*conds)).order_by(r.c.id).limit(limit))
        return [row.id for row in rows]

    def page(self, repo: Repository, resource_type: str, criteria: list[AnyCriterion],
             sort: list[SortKey], count: int, cursor: str | None) -> Page:
        repo.flush()
        resolve_terms(repo, criteria)  # :in, :below, ... -> system|code values, once per query
        r = RESOURCE
        ctx = self.context(repo)
        walk = driver(ctx, resource_type, criteria) if not sort else None
        if walk is not None:  # candidates of one criterion in id order, each checked (sql.driver)
            ids, rest = walk
            found = ids.subquery()
            cand = select(found.c.resource_id.label("id")).distinct().subquery()
            conds = [r.c.id == cand.c.id, *conditions(ctx, r, resource_type, rest)]
            inner = select(cand.c.id).where(exists(select(literal(1)).where(*conds))).subquery()
        else:
            keys = [sort_expression(r, resource_type, k).label(f"s{i}") for i, k in enumerate(sort)]
            conds = conditions(ctx, r, resource_type, criteria)
            inner = select(r.c.id, *keys).where(and_(*conds)).subquery()
        columns = [inner.c[f"s{i}"] for i in range(len(sort))]
        stmt = select(inner)
        if cursor:
            values, last_id = decode_cursor(cursor, len(sort))
            stmt = stmt.where(after_cursor(columns, sort, inner.c.id, values, last_id))
        stmt = stmt.order_by(*order_by(columns, sort, inner.c.id)).limit(count + 1)
        rows = repo.conn.execute(stmt).all()
        more = len(rows) > count
        rows = rows[:count]
        next_cursor = encode_cursor(list(rows[-1][1:]), rows[-1][0]) if more and rows else None
        return Page([row[0] for row in rows], next_cursor)

    def page_types(self, repo: Repository, parts: list[tuple[str, list[AnyCriterion], list[SortKey]]],
                   count: int, cursor: str | None) -> tuple[list[tuple[str, str]], str | None]:
        """System-level search over several types: one UNION ALL, ordered by the sort keys then Type/id."""
        repo.flush()
        r = RESOURCE
        n = len(parts[0][2])
        selects = []
        for rtype, criteria, sort in parts:
            resolve_terms(repo, criteria)
            keys = [sort_expression(r, rtype, k).label(f"s{i}") for i, k in enumerate(sort)]
            ref = (literal(rtype + "/") + r.c.id).label("ref")
            selects.append(select(ref, *keys).where(and_(*conditions(self.context(repo), r, rtype, criteria))))
        inner = union_all(*selects).subquery() if len(selects) > 1 else selects[0].subquery()
        columns = [inner.c[f"s{i}"] for i in range(n)]
        sort = parts[0][2]
        stmt = select(inner)
        if cursor:
            values, last_ref = decode_cursor(cursor, n)
            stmt = stmt.where(after_cursor(columns, sort, inner.c.ref, values, last_ref))
        rows = repo.conn.execute(stmt.order_by(*order_by(columns, sort, inner.c.ref)).limit(count + 1)).all()
        more = len(rows) > count
        rows = rows[:count]
        next_cursor = encode_cursor(list(rows[-1][1:]), rows[-1][0]) if more and rows else None
        refs = [(str(row[0]).split("/", 1)[0], str(row[0]).split("/", 1)[1]) for row in rows]
        return refs, next_cursor

    def total(self, repo: Repository, resource_type: str, criteria: list[AnyCriterion],
              *, estimate: bool = False) -> int:
        repo.flush()
        resolve_terms(repo, criteria)
        r = RESOURCE
        matching = select(r.c.id).where(and_(*conditions(self.context(repo), r, resource_type, criteria)))
        if estimate and repo.dialect == "postgresql":
            try:
                compiled = matching.compile(repo.conn, compile_kwargs={"literal_binds": True})
            except Exception:  # a value without a literal form: count exactly instead
                compiled = None
            if compiled is not None:
                plan = repo.conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}").scalar_one()
                plan = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
                return int(plan[0]["Plan"]["Plan Rows"])
        return int(repo.conn.execute(select(func.count()).select_from(matching.subquery())).scalar_one())

"""Token ``:in`` / ``:not-in`` / ``:above`` / ``:below`` through the terminology service (search.html#token).

Each such criterion is expanded once per query, before its SQL is built, into the (system, code) pairs it
stands for, and rewritten as a plain token criterion on them (``:not-in`` as ``:not``): the lookup then
uses the token hash index like any ``system|code`` search.

- ``:in`` / ``:not-in``: the ValueSet with that canonical URL (``url|version`` allowed), expanded by
  ``terminology.valueset.members`` (compose, filters, nested value sets, or a stored expansion).
- ``:below`` / ``:above``: ``[system|]code`` and its descendants / ancestors, read from the is-a closure
  (``terminology_closure``) in one query; without a system, every stored code system holding the code.

Bounded: a ``:below`` / ``:above`` standing for more than ``MAX_CODES`` codes is not listed but joined on
the closure table in SQL (``(system, code) IN (SELECT ...)``: correct at any size, without the hash index);
a ValueSet expanding beyond it is refused (422 too-costly, naming the parameter) rather than sent as a huge
IN list. ValueSets and CodeSystems are definitions, read apart from the token's patient restriction (they
belong to no patient).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import select

from fhir_server.errors import INVALID, NOT_FOUND, TOO_COSTLY, FhirError, Issue
from fhir_server.search.parser import (
    TERMINOLOGY_MODIFIERS,
    AnyCriterion,
    CompositeValue,
    Criterion,
    HasCriterion,
    TokenValue,
)
from fhir_server.storage.access import as_system
from terminology import store
from terminology.tables import CLOSURE, CODE_SYSTEM
from terminology.valueset import members

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

MAX_CODES = 10_000


def resolve(repo: Repository, criteria: list[AnyCriterion]) -> None:
    """Rewrite, in place, every terminology-modified token criterion (also inside chains, _has, composites)."""
    definitions: Repository | None = None
    for c in criteria:
        for crit in _walk(c):
            if crit.param.type == "token" and crit.modifier in TERMINOLOGY_MODIFIERS:
                if definitions is None:
                    # the code systems and value sets a criterion names are definitions, not patient data
                    definitions = replace(repo, access=as_system("terminology definitions behind :in/:below"))
                _rewrite(definitions, crit)


def _walk(c: AnyCriterion) -> list[Criterion]:
    if isinstance(c, HasCriterion):
        return _walk(c.inner)
    if not isinstance(c, Criterion):
        return []
    out = [c]
    for inner in c.chain:
        out += _walk(inner)
    for v in c.values:
        if isinstance(v, CompositeValue):
            for part in v.parts:
                out += _walk(part)
    return out


def _rewrite(repo: Repository, c: Criterion) -> None:
    pairs: set[tuple[str, str]] = set()
    for v in c.values:
        if c.modifier in ("in", "not-in"):
            pairs |= _value_set(repo, c.name, str(v))
        elif isinstance(v, TokenValue) and v.code:
            pairs |= _subsumed(repo, v.system or None, v.code, below=c.modifier == "below")
            if len(pairs) > MAX_CODES:
                return  # too many to list: left as :above/:below, joined on the closure in SQL (sql/token.py)
        else:
            raise FhirError(400, INVALID, f"':{c.modifier}' takes [system|]code, not {v!r}", (c.name,))
        if len(pairs) > MAX_CODES:
            raise FhirError(422, TOO_COSTLY, f"'{c.name}' stands for more than {MAX_CODES} codes; narrow the "
                                             "value set", (c.name,))
    c.values = [TokenValue(system, code) for system, code in sorted(pairs)]
    c.modifier = "not" if c.modifier == "not-in" else None


def _value_set(repo: Repository, name: str, url: str) -> set[tuple[str, str]]:
    if not url:
        raise FhirError(400, INVALID, f"'{name}' needs a ValueSet canonical URL", (name,))
    try:
        vs = store.by_url(repo, "ValueSet", url, expression=name)
        return {m.key for m in members(repo, vs)}
    except FhirError as exc:  # unknown ValueSet, unknown code system, ...: name the search parameter
        status = 400 if exc.status == 404 else exc.status
        code = NOT_FOUND if exc.status == 404 else (exc.issues[0].code if exc.issues else INVALID)
        raise FhirError(status, [Issue(code, f"{name}: {exc.message}", expression=(name,))]) from None


def _subsumed(repo: Repository, system: str | None, code: str, *, below: bool) -> set[tuple[str, str]]:
    other, this = (CLOSURE.c.descendant, CLOSURE.c.ancestor) if below else (CLOSURE.c.ancestor, CLOSURE.c.descendant)
    stmt = select(CODE_SYSTEM.c.url.label("system"), other.label("code")) \
        .select_from(CLOSURE.join(CODE_SYSTEM, CODE_SYSTEM.c.resource_id == CLOSURE.c.resource_id)) \
        .where(this == code).limit(MAX_CODES + 1)
    if system:
        stmt = stmt.where(CODE_SYSTEM.c.url == system)
    pairs: set[tuple[str, str]] = {(row.system, row.code) for row in repo.execute(stmt)}
    if system:
        pairs.add((system, code))  # a code the server does not know still matches itself
    return pairs

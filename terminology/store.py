"""Reads of the concept tables and of the terminology resources an operation names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select

from fhir_server.errors import NOT_FOUND, FhirError
from terminology import preloading
from terminology.tables import CLOSURE, CODE_SYSTEM, CONCEPT

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository


@dataclass(frozen=True)
class CodeSystemRef:
    resource_id: str
    url: str
    version: str
    name: str | None
    concept_count: int = 0


@dataclass(frozen=True)
class Concept:
    code: str
    display: str | None
    definition: str | None
    designations: list[dict[str, Any]]
    properties: list[dict[str, Any]]
    parents: list[str]


def code_system(repo: Repository, url: str, version: str | None = None) -> CodeSystemRef | None:
    """The stored CodeSystem for a canonical URL (``url|version`` allowed); the latest version by default."""
    if version is None and "|" in url:
        url, version = url.split("|", 1)
    stmt = select(CODE_SYSTEM).where(CODE_SYSTEM.c.url == url)
    if version:
        stmt = stmt.where(CODE_SYSTEM.c.version == version)
    rows = repo.execute(stmt).all()
    if not rows:
        return None
    # one with concepts beats a stub (the core's content: not-present SNOMED CT beside an imported one)
    row = max(rows, key=lambda r: (r.concept_count > 0, _version_key(r.version), r.resource_id))
    return CodeSystemRef(row.resource_id, row.url, row.version, row.name, row.concept_count)


def code_system_by_id(repo: Repository, resource_id: str) -> CodeSystemRef | None:
    row = repo.execute(select(CODE_SYSTEM).where(CODE_SYSTEM.c.resource_id == resource_id)).first()
    return None if row is None else CodeSystemRef(row.resource_id, row.url, row.version, row.name, row.concept_count)


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.split("."))


def _concept(row: Any) -> Concept:
    return Concept(row.code, row.display, row.definition, row.designations or [], row.properties or [],
                   row.parents or [])


def concept(repo: Repository, cs: CodeSystemRef, code: str) -> Concept | None:
    row = repo.execute(select(CONCEPT).where(CONCEPT.c.resource_id == cs.resource_id, CONCEPT.c.code == code)).first()
    return None if row is None else _concept(row)


def concepts(repo: Repository, cs: CodeSystemRef, codes: set[str] | None = None, *,
             text: str | None = None) -> list[Concept]:
    """Concepts in CodeSystem order: all of them, or those with the given codes. ``text`` narrows them in SQL
    to those whose display contains every word of it or whose code starts with it (a superset of what the
    $expand text filter keeps, so that filter still decides)."""
    stmt = select(CONCEPT).where(CONCEPT.c.resource_id == cs.resource_id).order_by(CONCEPT.c.seq)
    if text and text.split() and text.isascii():  # SQLite's lower() knows only ASCII
        words = and_(*(func.lower(CONCEPT.c.display).like(f"%{_like(w)}%", escape="\\")
                       for w in text.lower().split()))
        stmt = stmt.where(or_(words, func.lower(CONCEPT.c.code).like(f"{_like(text.lower())}%", escape="\\")))
    if codes is not None:
        if not codes:
            return []
        out: list[Concept] = []
        ordered = sorted(codes)
        for start in range(0, len(ordered), 500):
            out += [_concept(r) for r in repo.execute(stmt.where(CONCEPT.c.code.in_(ordered[start:start + 500])))]
        return out
    return [_concept(r) for r in repo.execute(stmt)]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def descendants(repo: Repository, cs: CodeSystemRef, code: str, *, include_self: bool = True) -> set[str]:
    rows = repo.execute(select(CLOSURE.c.descendant).where(
        CLOSURE.c.resource_id == cs.resource_id, CLOSURE.c.ancestor == code)).scalars()
    found = set(rows)
    if not include_self:
        found.discard(code)
    return found


def ancestors(repo: Repository, cs: CodeSystemRef, code: str, *, include_self: bool = True) -> set[str]:
    rows = repo.execute(select(CLOSURE.c.ancestor).where(
        CLOSURE.c.resource_id == cs.resource_id, CLOSURE.c.descendant == code)).scalars()
    found = set(rows)
    if not include_self:
        found.discard(code)
    return found


def subsumes(repo: Repository, cs: CodeSystemRef, ancestor: str, descendant: str) -> bool:
    return repo.execute(select(CLOSURE.c.ancestor).where(
        CLOSURE.c.resource_id == cs.resource_id, CLOSURE.c.ancestor == ancestor,
        CLOSURE.c.descendant == descendant)).first() is not None


def children(repo: Repository, cs: CodeSystemRef, code: str) -> list[str]:
    below = descendants(repo, cs, code, include_self=False)
    return [c.code for c in concepts(repo, cs, below) if code in c.parents]


def by_url(repo: Repository, resource_type: str, url: str, version: str | None = None, *,
           expression: str = "url") -> dict[str, Any]:
    """The stored resource with a canonical URL (``url|version`` allowed); 404 naming the parameter if none.
    One indexed lookup plus a content cache (``fhir_server.packages.canonical``), not a search: $validate-code
    and $expand find their ValueSet this way on every call. The result is shared: do not modify it."""
    from fhir_server.packages import canonical

    if version is None and "|" in url:
        url, version = url.split("|", 1)
    found = canonical.find(repo, resource_type, url, version)
    if found is None:
        raise preloading.not_yet(resource_type, url, repo.conn) or unknown(resource_type, url, version, expression)
    return found


def unknown(resource_type: str, url: str, version: str | None, expression: str = "url") -> FhirError:
    """The 404 of a canonical URL nothing (the caller may read) has."""
    what = f"{url}|{version}" if version else url
    return FhirError(404, NOT_FOUND, f"No {resource_type} with the URL {what} is known", (expression,))

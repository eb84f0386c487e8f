"""Keeps the concept tables in step with CodeSystem resources (a BEFORE_COMMIT hook).

A CodeSystem's concepts (nested ``concept.concept`` and ``parent``/``child`` properties both give is-a)
are flattened into ``terminology_concept`` and the transitive closure into ``terminology_closure``,
written in bulk with the resource in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete

from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from terminology.tables import CLOSURE, CODE_SYSTEM, CONCEPT

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository


def register(hooks: Hooks) -> None:
    hooks.register(HookPoint.BEFORE_COMMIT, on_write)


def on_write(event: WriteEvent, repo: Repository | None) -> None:
    if event.resource_type != "CodeSystem" or repo is None or event.resource_id is None:
        return
    rid = event.resource_id
    if event.previous is not None:  # a new version replaces every row of the old one
        # ... except the concepts of a not-present CodeSystem: an importer wrote them (terminology/importers)
        imported = event.resource is not None and event.resource.get("content") == "not-present"
        for table in (CODE_SYSTEM,) if imported else (CLOSURE, CONCEPT, CODE_SYSTEM):
            repo.execute(delete(table).where(table.c.resource_id == rid))
    if event.resource is not None and event.resource.get("url"):
        store(repo, rid, event.resource)


def store(repo: Repository, rid: str, code_system: dict[str, Any]) -> None:
    concepts = list(flatten(code_system.get("concept") or []))
    parents: dict[str, list[str]] = {}
    for concept, parent in concepts:
        parents.setdefault(concept["code"], [])
        if parent is not None:
            parents[concept["code"]].append(parent)
    for concept, _ in concepts:
        for prop in concept.get("property") or []:
            if prop.get("code") == "parent" and prop.get("valueCode"):
                parents[concept["code"]].append(prop["valueCode"])
            elif prop.get("code") == "child" and prop.get("valueCode") in parents:
                parents[prop["valueCode"]].append(concept["code"])
    repo.defer_insert(CODE_SYSTEM, {"resource_id": rid, "url": code_system["url"],
                                    "version": code_system.get("version") or "", "name": code_system.get("name"),
                                    "concept_count": len(parents)})
    seen: set[str] = set()
    for seq, (concept, _) in enumerate(concepts):
        code = concept["code"]
        if code in seen:  # a code listed twice (under two parents) is one concept
            continue
        seen.add(code)
        props = [p for p in concept.get("property") or [] if p.get("code") not in ("parent", "child")]
        repo.defer_insert(CONCEPT, {
            "resource_id": rid, "code": code, "display": concept.get("display"),
            "definition": concept.get("definition"), "designations": concept.get("designation") or None,
            "properties": props or None, "parents": sorted(set(parents[code])) or None, "seq": seq})
    for ancestor, descendant in closure(parents):
        repo.defer_insert(CLOSURE, {"resource_id": rid, "ancestor": ancestor, "descendant": descendant})


def flatten(concepts: list[dict[str, Any]], parent: str | None = None) -> Iterator[tuple[dict[str, Any], str | None]]:
    for concept in concepts:
        if not concept.get("code"):
            continue
        yield concept, parent
        yield from flatten(concept.get("concept") or [], concept["code"])


def closure(parents: dict[str, list[str]]) -> set[tuple[str, str]]:
    """Every (ancestor, descendant) pair, reflexive ones included; cycles in bad data end, never loop."""
    ancestors: dict[str, set[str]] = {}

    def of(code: str, path: frozenset[str]) -> set[str]:
        if code in ancestors:
            return ancestors[code]
        found = {code}
        for parent in parents.get(code, ()):
            if parent in path or parent not in parents:
                continue
            found |= of(parent, path | {parent})
        ancestors[code] = found
        return found

    pairs: set[tuple[str, str]] = set()
    for code in parents:
        pairs.update((a, code) for a in of(code, frozenset({code})))
    return pairs

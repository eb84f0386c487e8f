"""Importers for the big external code systems, from the files an operator downloads under their own licence.

Each importer reads its release format into an ``Import`` (CodeSystem metadata and concepts); ``store``
writes it: a CodeSystem resource with ``content: not-present`` (the concepts would make a resource of
hundreds of megabytes) plus the concept rows and the is-a closure, all in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, update

from terminology.sync import closure
from terminology.tables import CLOSURE, CODE_SYSTEM, CONCEPT

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import AccessPolicy, Repository


@dataclass
class ImportedConcept:
    code: str
    display: str | None
    parents: set[str] = field(default_factory=set)
    properties: list[dict[str, Any]] = field(default_factory=list)
    designations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Import:
    resource_id: str  # the CodeSystem resource's id, e.g. "loinc"
    url: str
    version: str
    name: str
    title: str
    publisher: str
    concepts: dict[str, ImportedConcept] = field(default_factory=dict)

    def concept(self, code: str, display: str | None = None) -> ImportedConcept:
        found = self.concepts.get(code)
        if found is None:
            found = self.concepts[code] = ImportedConcept(code, display)
        elif display and not found.display:
            found.display = display
        return found


def code_system(imp: Import) -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "id": imp.resource_id, "url": imp.url, "version": imp.version,
            "name": imp.name, "title": imp.title, "status": "active", "publisher": imp.publisher,
            "hierarchyMeaning": "is-a", "content": "not-present", "count": len(imp.concepts)}


def store(server: FhirServer, imp: Import, *, access: AccessPolicy) -> int:
    """Write the import (replacing an earlier one with the same resource id) with ``access`` (whose import
    it is); returns the concept count."""

    def work(repo: Repository) -> int:
        repo.update("CodeSystem", imp.resource_id, code_system(imp))
        for table in (CLOSURE, CONCEPT):  # the hook keeps a not-present CodeSystem's rows: the import owns them
            repo.execute(delete(table).where(table.c.resource_id == imp.resource_id))
        parents = {code: sorted(p for p in c.parents if p in imp.concepts) for code, c in imp.concepts.items()}
        for seq, c in enumerate(imp.concepts.values()):
            repo.defer_insert(CONCEPT, {
                "resource_id": imp.resource_id, "code": c.code, "display": c.display, "definition": None,
                "designations": c.designations or None, "properties": c.properties or None,
                "parents": parents[c.code] or None, "seq": seq})
        for ancestor, descendant in closure(parents):
            repo.defer_insert(CLOSURE, {"resource_id": imp.resource_id, "ancestor": ancestor,
                                        "descendant": descendant})
        repo.execute(update(CODE_SYSTEM).where(CODE_SYSTEM.c.resource_id == imp.resource_id)
                     .values(concept_count=len(imp.concepts)))
        return len(imp.concepts)

    return server.uow.run(work, write=True, access=access)

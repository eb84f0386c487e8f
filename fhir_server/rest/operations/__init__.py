"""FHIR operations ($name): one file per operation, each registered with the levels it runs at."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fhir_server.errors import FORBIDDEN, NOT_SUPPORTED, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

OperationHandler = Callable[[FhirRequest, "Repository", str | None, str | None], FhirResponse]


@dataclass
class Operation:
    name: str
    handler: OperationHandler
    definition: str  # canonical URL of the OperationDefinition
    system: bool = False
    types: frozenset[str] | None = None  # None: every type
    instance: bool = False
    affects_state: bool = False
    # Never writes, whatever the HTTP method: a POST of it runs in a read-only unit of work (no write lock on
    # SQLite, no BEGIN/COMMIT on PostgreSQL). Opt-in: some operations that do not "affect state" in the FHIR
    # sense still write (the $export kick-off stores its job).
    read_only: bool = False
    # An administrative operation ($reindex, $import): only an administrator runs it (an ``admin`` user or a
    # backend granted writes on every type; ``AccessPolicy.administers``), at every level and in Bundles.
    admin: bool = False


@dataclass
class OperationRegistry:
    operations: dict[str, Operation] = field(default_factory=dict)

    def register(self, operation: Operation) -> None:
        self.operations[operation.name] = operation

    def reads_only(self, path: str) -> bool:
        """Whether ``path`` (relative to the base) invokes an operation registered ``read_only``."""
        last = path.rstrip("/").rsplit("/", 1)[-1]
        op = self.operations.get(last[1:]) if last.startswith("$") else None
        return op is not None and op.read_only

    def invoke(self, req: FhirRequest, repo: Repository, name: str, resource_type: str | None,
               resource_id: str | None) -> FhirResponse:
        op = self.operations.get(name)
        level_ok = op is not None and (
            (resource_type is None and op.system)
            or (resource_type is not None and (op.types is None or resource_type in op.types)
                and (resource_id is None or op.instance)))
        if op is None or not level_ok:
            where = "/".join(p for p in (resource_type, resource_id) if p) or "the system level"
            raise FhirError(400, NOT_SUPPORTED, f"Operation ${name} is not supported at {where}")
        if op.admin and not repo.access.administers():  # auth
            raise FhirError(403, FORBIDDEN, f"${name} is for administrators: an admin user or a backend granted "
                                            f"system/*.write", (f"${name}",))
        return op.handler(req, repo, resource_type, resource_id)

"""FHIR_VALIDATE_PROFILES: every write is validated against its meta.profile (and the base invariants).

A BEFORE_COMMIT hook, so it sees the resource after the structure check and the BEFORE_VALIDATE hooks, in
the write's own transaction (the profiles it reads are those of this moment). Any error rejects the write
with 422 and the whole OperationOutcome; a profile this server does not have is an error under
FHIR_VALIDATE_PROFILES_STRICT, else a warning (warnings never reject).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.errors import FhirError
from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.validation.service import declared_profiles, validate_profiles

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository


class ProfileOnWrite:
    def __init__(self, strict: bool) -> None:
        self.unknown = "error" if strict else "warning"

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_COMMIT, self)

    def __call__(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource is None:
            return
        issues = validate_profiles(repo, event.resource, declared_profiles(event.resource),
                                   unknown_profile=self.unknown)
        if any(i.severity in ("error", "fatal") for i in issues):
            raise FhirError(422, issues)

"""$validate (http://hl7.org/fhir/OperationDefinition/Resource-validate), type and instance level.

POST a Parameters resource (``resource``, ``mode``, ``profile``) or the bare resource; GET validates the
stored instance (``[type]/[id]/$validate?profile=...``). The answer is 200 with an OperationOutcome
listing every issue (an ``information`` issue when there is none), whatever the issues' severity: the
operation succeeded, the resource may not have. ``mode``: ``create`` (default), ``update`` (the resource
needs an id, the instance's one at instance level), ``delete`` (the instance must exist; nothing else is
checked: this server does not refuse deletes on references), ``profile`` (as create).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.errors import INFORMATIONAL, INVALID, NOT_SUPPORTED, REQUIRED, FhirError, Issue, operation_outcome
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.validation.resource import validate_resource
from fhir_server.validation.service import declared_profiles, validate_profiles

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
MODES = ("create", "update", "delete", "profile")


def validate_all(repo: Repository | None, resource: Any, expected_type: str | None, profiles: list[str], *,
                 unknown_profile: str = "warning", requested: list[str] | None = None) -> list[Issue]:
    """Structure, then (when the structure is sound) invariants, references, extensions and profiles:
    ``profiles`` (meta.profile: unknown ones get ``unknown_profile``) and ``requested`` (unknown: error)."""
    issues = validate_resource(resource, expected_type)
    if any(i.severity in ("error", "fatal") for i in issues):
        return [*issues, Issue(INFORMATIONAL, "Profiles and invariants were not checked: fix the structure first",
                               severity="information")]
    issues += validate_profiles(repo, resource, profiles, unknown_profile=unknown_profile, requested=requested)
    return list(dict.fromkeys(issues))  # the same finding through two profiles is one issue


def _input(req: FhirRequest) -> tuple[Any, str | None, list[str]]:
    """(resource or None, mode, profiles) from a Parameters body, a bare resource, or the query."""
    resource: Any = None
    mode = req.param("mode")
    profiles = [v for k, v in req.query if k == "profile"]
    if req.method == "POST" and (req.body or req.resource is not None):
        body = req.json_body()
        if isinstance(body, dict) and body.get("resourceType") == "Parameters":
            for p in body.get("parameter") or []:
                if not isinstance(p, dict):
                    continue
                if p.get("name") == "resource":
                    resource = p.get("resource")
                elif p.get("name") == "mode":
                    mode = p.get("valueCode") or p.get("valueString") or mode
                elif p.get("name") == "profile":
                    value = p.get("valueUri") or p.get("valueCanonical") or p.get("valueString")
                    if isinstance(value, str):
                        profiles.append(value)
        else:
            resource = body
    if mode is not None and mode not in MODES:
        raise FhirError(400, INVALID, f"mode must be one of {', '.join(MODES)}", ("mode",))
    return resource, mode, profiles


def validate(req: FhirRequest, repo: Repository, resource_type: str | None, resource_id: str | None) -> FhirResponse:
    resource, mode, requested = _input(req)
    if resource_id is not None and (mode == "delete" or resource is None):
        stored = repo.read(str(resource_type), resource_id)  # 404 / 410 / access as for a read
        if mode == "delete":
            return _answer([])
        resource = stored.content
    if resource is None:
        raise FhirError(400, REQUIRED, "Give the resource to validate: a Parameters 'resource' or the body",
                        ("resource",))
    if mode == "delete":
        raise FhirError(400, NOT_SUPPORTED, "mode=delete validates a stored instance: use [type]/[id]/$validate",
                        ("mode",))
    issues: list[Issue] = []
    if mode == "update" and isinstance(resource, dict):
        if not resource.get("id"):
            issues.append(Issue(REQUIRED, "mode=update: the resource must have an id", expression=("id",)))
        elif resource_id is not None and resource.get("id") != resource_id:
            issues.append(Issue(INVALID, f"mode=update: the resource's id {resource.get('id')} is not the "
                                         f"instance's {resource_id}", expression=("id",)))
    meta = declared_profiles(resource) if isinstance(resource, dict) else []
    issues += validate_all(repo, resource, resource_type, meta, requested=[p for p in requested if p not in meta])
    return _answer(issues)


def _answer(issues: list[Issue]) -> FhirResponse:
    if not issues:
        issues = [Issue(INFORMATIONAL, "No issues were found", severity="information")]
    return FhirResponse(200, operation_outcome(issues))


def register(server: FhirServer) -> None:
    server.operations.register(Operation("validate", validate, DEFINITION, types=None, instance=True))

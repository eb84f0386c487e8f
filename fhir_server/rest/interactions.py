"""The instance and type interactions of FHIR R4 http.html: read, vread, create, update, patch, delete,
and their conditional forms. Each is ``(request, repository) -> response`` and knows no web framework."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.definitions import resource_types
from fhir_server.errors import FORBIDDEN, INVALID, NOT_FOUND, NOT_SUPPORTED, PROCESSING, FhirError, Issue, informational
from fhir_server.rest import cascade, idempotency
from fhir_server.rest.patch import apply_json_patch
from fhir_server.rest.request import FhirRequest, FhirResponse, parse_etag, parse_version
from fhir_server.rest.respond import read_response, version_headers, write_response
from fhir_server.search.access import readable
from fhir_server.search.summary import check_summary, shape
from fhir_server.storage.repository import Repository, Version
from fhir_server.validation.resource import ID_RE

# Parameters that shape a response and never select resources.
RESULT_PARAMS = {"_format", "_pretty", "_summary", "_elements"}


def criteria_params(query: list[tuple[str, str]] | str) -> list[tuple[str, str]]:
    if isinstance(query, str):
        query = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    return [(k, v) for k, v in query if k not in RESULT_PARAMS]


def check_type_known(resource_type: str) -> None:
    if resource_type not in resource_types():
        raise FhirError(404, NOT_FOUND, f"Unknown resource type '{resource_type}'")


def check_id(resource_type: str, resource_id: str) -> None:
    if not ID_RE.match(resource_id):
        raise FhirError(400, INVALID, f"Invalid id {resource_id!r}", (f"{resource_type}.id",))


def read(req: FhirRequest, repo: Repository, resource_type: str, resource_id: str) -> FhirResponse:
    check_id(resource_type, resource_id)
    version = repo.read(resource_type, resource_id)
    response = read_response(req, version)
    if _not_modified(req, version):
        return FhirResponse(304, None, response.headers)
    return _shaped(req, response)


def _shaped(req: FhirRequest, response: FhirResponse) -> FhirResponse:
    summary, elements = req.param("_summary"), req.param("_elements")
    if response.resource is not None and (summary or elements):
        wanted = [e.strip().split(".")[-1] for e in elements.split(",") if e.strip()] if elements else None
        response.resource = shape(response.resource, check_summary(summary), wanted)
    return response


def vread(req: FhirRequest, repo: Repository, resource_type: str, resource_id: str, vid: str) -> FhirResponse:
    check_id(resource_type, resource_id)
    return _shaped(req, read_response(req, repo.vread(resource_type, resource_id, parse_version(vid, "Version"))))


def create(req: FhirRequest, repo: Repository, resource_type: str) -> FhirResponse:
    resource = body_resource(req, resource_type)
    resource.pop("id", None)  # http.html#create: the server SHALL ignore a client's id on create
    criteria = req.header("if-none-exist")
    key = req.header(idempotency.HEADER)
    if key is not None and not criteria:  # a retried POST answers with what the first one made
        criteria = idempotency.idempotent_criteria(resource, resource_type, key)
    if criteria:
        existing = conditional_match(repo, resource_type, criteria_params(criteria), "If-None-Exist", create=True)
        if existing is not None:
            return existing_response(req, existing)
    version = repo.create(resource_type, resource)
    return write_response(req, version, 201, f"Created {version.reference}")


def existing_response(req: FhirRequest, version: Version) -> FhirResponse:
    """Conditional create matched one resource: 200 with it, nothing created."""
    return write_response(req, version, 200, f"Matched existing {version.reference}; nothing created")


def conditional_match(repo: Repository, resource_type: str, params: list[tuple[str, str]],
                       what: str, create: bool = False) -> Version | None:
    """Lock the criteria for this transaction, then find at most one match (several -> 412).

    A conditional create (``create``) looks first and locks only when nothing matched, then looks again:
    every creator holds the lock, so two never both create, while a match, which writes nothing, never
    waits on another writer's transaction (bench/mllp.py: 4 senders naming one doctor queued on its lock).
    Conditional update, patch and delete always lock: what they change must still match when they do."""
    if not params:
        raise FhirError(400, INVALID, f"{what} has no search criteria")
    ids = repo.find_ids(resource_type, params) if create else []
    if not ids:
        repo.lock(f"{resource_type}?{sorted(params)}")
        ids = repo.find_ids(resource_type, params)
    if len(ids) > 1:
        raise FhirError(412, PROCESSING, f"{what} criteria matched {len(ids)} {resource_type} resources; "
                                         "they must match at most one")
    return repo.read(resource_type, ids[0]) if ids else None


def update(req: FhirRequest, repo: Repository, resource_type: str, resource_id: str) -> FhirResponse:
    check_id(resource_type, resource_id)
    resource = body_resource(req, resource_type)
    body_id = resource.get("id")
    if body_id is None:
        raise FhirError(400, [Issue(INVALID, "An update must carry the resource id in the body",
                                    expression=(f"{resource_type}.id",))])
    if body_id != resource_id:
        raise FhirError(400, [Issue(INVALID, f"The id in the body ({body_id!r}) does not match the id in the "
                                             f"URL ({resource_id!r})", expression=(f"{resource_type}.id",))])
    version, created = repo.update(resource_type, resource_id, resource, if_match=parse_etag(req.header("if-match")))
    return write_response(req, version, 201 if created else 200,
                          f"{'Created' if created else 'Updated'} {version.reference}")


def conditional_update(req: FhirRequest, repo: Repository, resource_type: str) -> FhirResponse:
    resource = body_resource(req, resource_type)
    existing = conditional_match(repo, resource_type, criteria_params(req.query), "Conditional update")
    body_id = resource.get("id")
    if existing is None:
        if body_id is not None:  # no match and a client id: update-as-create with that id
            check_id(resource_type, body_id)
            version, _ = repo.update(resource_type, body_id, resource)
        else:
            version = repo.create(resource_type, resource, method="PUT")
        return write_response(req, version, 201, f"Created {version.reference}")
    if body_id is not None and body_id != existing.id:
        raise FhirError(400, [Issue(INVALID, f"The id in the body ({body_id!r}) differs from the matched "
                                             f"resource {existing.reference}", expression=(f"{resource_type}.id",))])
    resource["id"] = existing.id
    version, _ = repo.update(resource_type, existing.id, resource, if_match=parse_etag(req.header("if-match")))
    return write_response(req, version, 200, f"Updated {version.reference}")


def delete(req: FhirRequest, repo: Repository, resource_type: str, resource_id: str) -> FhirResponse:
    check_id(resource_type, resource_id)
    if_match = parse_etag(req.header("if-match"))
    if cascade.requested(req.param(cascade.PARAM)):  # referrers too (rest/cascade.py)
        version = cascade.delete(repo, resource_type, resource_id, if_match=if_match)
    else:
        version = repo.delete(resource_type, resource_id, if_match=if_match)
    return _deleted(req, version, f"{resource_type}/{resource_id}")


def conditional_delete(req: FhirRequest, repo: Repository, resource_type: str) -> FhirResponse:
    # A conditional delete is a search first: a token that may not search the type is refused whether or not
    # anything would match (else "nothing matched" and "not yours" would answer differently).
    if not readable(repo.access, resource_type) or not repo.access.may(resource_type, "d"):
        raise FhirError(403, FORBIDDEN, f"The access token does not permit searching and deleting "
                                        f"{resource_type}, which a conditional delete does", (resource_type,))
    cascading = cascade.requested(req.param(cascade.PARAM))
    criteria = [(k, v) for k, v in criteria_params(req.query) if k != cascade.PARAM]
    existing = conditional_match(repo, resource_type, criteria, "Conditional delete")
    if existing is None:
        return _deleted(req, None, f"{resource_type} matching the criteria")
    if cascading:
        return _deleted(req, cascade.delete(repo, resource_type, existing.id), existing.reference)
    return _deleted(req, repo.delete(resource_type, existing.id), existing.reference)


def _deleted(req: FhirRequest, version: Version | None, what: str) -> FhirResponse:
    headers = version_headers(req, version, location=False) if version else {}
    if (req.prefer("return") or "").lower() == "operationoutcome":
        text = f"Deleted {what}" if version else f"Nothing to delete: {what} is already deleted or absent"
        return FhirResponse(200, informational(text), headers)
    return FhirResponse(204, None, headers)


def patch(req: FhirRequest, repo: Repository, resource_type: str, resource_id: str) -> FhirResponse:
    check_id(resource_type, resource_id)
    return _apply_patch(req, repo, repo.read(resource_type, resource_id))


def conditional_patch(req: FhirRequest, repo: Repository, resource_type: str) -> FhirResponse:
    existing = conditional_match(repo, resource_type, criteria_params(req.query), "Conditional patch")
    if existing is None:
        raise FhirError(404, NOT_FOUND, f"No {resource_type} matches the patch criteria")
    return _apply_patch(req, repo, existing)


def _apply_patch(req: FhirRequest, repo: Repository, current: Version) -> FhirResponse:
    if req.content_type != "application/json-patch+json":
        raise FhirError(415, NOT_SUPPORTED, f"PATCH supports application/json-patch+json, not "
                                            f"{req.content_type or 'no Content-Type'}")
    assert current.content is not None
    patched = apply_json_patch(current.content, req.json_body())
    if not isinstance(patched, dict) or (patched.get("id"), patched.get("resourceType")) != \
            (current.id, current.resource_type):
        raise FhirError(422, PROCESSING, "A patch may not change the resource's id or resourceType")
    if_match = parse_etag(req.header("if-match"))
    version, _ = repo.update(current.resource_type, current.id, patched, if_match=if_match, method="PATCH",
                             interaction="patch")
    return write_response(req, version, 200, f"Patched {version.reference}")


def body_resource(req: FhirRequest, resource_type: str) -> dict[str, Any]:
    if req.content_type and req.content_type not in ("application/fhir+json", "application/json",
                                                     "application/json+fhir", "text/json"):
        if "xml" in req.content_type:
            raise FhirError(415, NOT_SUPPORTED, "This server accepts FHIR JSON only (application/fhir+json)")
        raise FhirError(415, NOT_SUPPORTED, f"Unsupported Content-Type {req.content_type}")
    body = req.json_body()
    if not isinstance(body, dict):
        raise FhirError(400, "structure", "The body must be a JSON object holding a FHIR resource")
    if body.get("resourceType") != resource_type:
        raise FhirError(400, [Issue(INVALID, f"resourceType {body.get('resourceType')!r} does not match the "
                                             f"URL's type {resource_type!r}", expression=("resourceType",))])
    return body


def _not_modified(req: FhirRequest, version: Version) -> bool:
    """Conditional read (http.html#cread): If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)."""
    if_none_match = req.header("if-none-match")
    if if_none_match is not None:
        return if_none_match.strip() in (version.etag, f'"{version.version_id}"')
    if_modified_since = req.header("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False  # an unparseable date is ignored, as HTTP says
        return version.last_updated.replace(microsecond=0) <= since
    return False

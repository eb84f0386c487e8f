"""How the core answers a write or read: headers (ETag, Last-Modified, Location) and Prefer handling."""

from __future__ import annotations

from email.utils import format_datetime

from fhir_server.errors import INFORMATIONAL, Issue, operation_outcome
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Version


def version_headers(req: FhirRequest, version: Version, *, location: bool) -> dict[str, str]:
    headers = {
        "ETag": version.etag,
        "Last-Modified": format_datetime(version.last_updated, usegmt=True),
    }
    if location:
        headers["Location"] = f"{req.base_url}/{version.reference}/_history/{version.version_id}"
    return headers


def read_response(req: FhirRequest, version: Version) -> FhirResponse:
    return FhirResponse(200, version.content, version_headers(req, version, location=False))


def write_response(req: FhirRequest, version: Version, status: int, message: str) -> FhirResponse:
    """Honour ``Prefer: return=minimal | representation | OperationOutcome`` (representation by default)."""
    headers = version_headers(req, version, location=True)
    wanted = (req.prefer("return") or "representation").lower()
    outcome = operation_outcome([Issue(INFORMATIONAL, message, severity="information"), *req.warnings])
    if wanted == "operationoutcome":
        return FhirResponse(status, outcome, headers)
    # Warnings travel with the resource only where FHIR has a place for them: Bundle.entry.response.outcome.
    warned = outcome if req.warnings else None
    if wanted == "minimal":
        return FhirResponse(status, None, headers, outcome=warned)
    return FhirResponse(status, version.content, headers, outcome=warned)

"""Framework-free request and response of the FHIR REST core (the web adapter converts to and from these)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any

from fhir_server.errors import INVALID, STRUCTURE, FhirError, Issue
from fhir_server.rest.json_body import parse_json
from fhir_server.storage.repository import AccessPolicy, Repository, require_access

# The FHIR base URL of the request being handled (FhirServer.handle), for what a write records for later use
# outside any request: a rest-hook Subscription keeps it, so its notifications carry absolute URLs even
# without FHIR_BASE_URL. "" outside a request (MLLP, jobs).
REQUEST_BASE_URL: ContextVar[str] = ContextVar("fhir_request_base_url", default="")
# The interaction being routed (a request, or one Bundle entry), for write hooks that honour its headers
# (``Prefer: handling``, ``If-None-Exist``) or add warnings to its answer. None outside an interaction.
CURRENT_REQUEST: ContextVar[FhirRequest | None] = ContextVar("fhir_current_request", default=None)


@dataclass
class FhirRequest:
    method: str
    path: str  # relative to the FHIR base, e.g. "Patient/1/_history/2"; "" for the base itself
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | None = None
    # A large raw body (Binary upload) spooled to a file by the adapter instead of ``body``.
    body_file: IO[bytes] | None = None
    base_url: str = ""
    # Bundle entries hand their already-parsed resource over instead of bytes.
    resource: dict[str, Any] | None = None
    # auth: what the caller may do (a token's fhir_server.auth.access.AccessContext, or as_system("why")).
    # Keyword-only and required: a request nobody's access is attached to cannot be made.
    access: AccessPolicy = field(kw_only=True)
    # audit: the client's network address (AuditEvent.agent.network), set by the web adapter.
    client_address: str | None = None
    # A transaction Bundle's caller's own write, run in the same unit of work after the last entry (with
    # the entries' responses) so it commits with them or not at all (the HL7 adapter's message status).
    in_transaction: Callable[[Repository, list[FhirResponse | None]], None] | None = None
    # Warnings a write hook raised without refusing (a possible duplicate patient): the write's answer carries
    # them in its OperationOutcome (Prefer: return=OperationOutcome, or Bundle.entry.response.outcome).
    warnings: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_access(self.access, "FhirRequest")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def json_body(self) -> Any:
        if self.resource is not None:
            return self.resource
        if not self.body:
            raise FhirError(400, STRUCTURE, "The request has no body")
        return parse_json(self.body)  # orjson, and no object may repeat a key

    def prefer(self, key: str) -> str | None:
        """Value of one Prefer token, e.g. prefer("return") -> "minimal"."""
        header = self.header("prefer")
        if not header:
            return None
        for part in header.split(","):
            for token in part.split(";"):
                name, _, value = token.strip().partition("=")
                if name.strip().lower() == key:
                    return value.strip().strip('"') or name.strip()
        return None


@contextmanager
def routing(req: FhirRequest) -> Iterator[FhirRequest]:
    """Make ``req`` the CURRENT_REQUEST while it is routed."""
    token = CURRENT_REQUEST.set(req)
    try:
        yield req
    finally:
        CURRENT_REQUEST.reset(token)


@dataclass
class FhirResponse:
    status: int
    resource: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Raw content (Binary download): an iterator of chunks and its media type.
    stream: Iterator[bytes] | None = None
    media_type: str | None = None
    # A write's warnings as an OperationOutcome when the body is the resource (Bundle.entry.response.outcome).
    outcome: dict[str, Any] | None = None
    # ``resource`` already serialised as compact JSON (the cached CapabilityStatement): sent as it is.
    json: bytes | None = None


def parse_version(value: str, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FhirError(400, INVALID, f"{what} {value!r} is not a version number") from None
    if number < 1:
        raise FhirError(400, INVALID, f"{what} {value!r} is not a version number")
    return number


def parse_etag(value: str | None) -> int | None:
    """If-Match / ETag values: W/"3", "3" or 3."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    return parse_version(text.strip('"'), "If-Match")

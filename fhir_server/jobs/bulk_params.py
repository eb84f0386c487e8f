"""Bulk Data Access kick-off parameters (export.html#query-parameters) -> the job's ``params``.

Everything that can be refused is refused here, at kick-off, with a 400 naming the parameter: a job that
is accepted can only fail for reasons of the data or the machine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.auth.access import AccessContext
from fhir_server.auth.compartment import patient_compartment_params
from fhir_server.definitions import resource_types
from fhir_server.errors import FORBIDDEN, INVALID, NOT_SUPPORTED, FhirError, bad_request
from fhir_server.rest.request import FhirRequest
from fhir_server.storage.access import SystemAccess
from fhir_server.storage.repository import AccessPolicy, Repository

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {NDJSON, "application/ndjson", "ndjson"}
KNOWN = {"_outputFormat", "_since", "_type", "_typeFilter", "patient"}
IGNORED = {"_format", "_pretty"}


def compartment_types() -> set[str]:
    return {*patient_compartment_params(), "Patient"}


def require_async(req: FhirRequest) -> None:
    if req.prefer("respond-async") is None:
        raise FhirError(400, INVALID, "Bulk data operations run asynchronously: send 'Prefer: respond-async'",
                        ("Prefer",))


def _parameters(req: FhirRequest) -> list[tuple[str, Any]]:
    """GET query pairs, or a POST Parameters resource (valueString / valueInstant / valueReference...)."""
    pairs: list[tuple[str, Any]] = [(k, v) for k, v in req.query if k not in IGNORED]
    if req.method == "POST" and (req.body or req.resource):
        body = req.json_body()
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise bad_request("The kick-off body must be a Parameters resource", ("Parameters",))
        for p in body.get("parameter", []):
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            pairs.append((str(p.get("name")), value))
    return pairs


def parse_instant(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name} {text!r} is not a FHIR instant", (name,)) from None
    if value.tzinfo is None:
        raise bad_request(f"{name} {text!r} needs a time zone", (name,))
    return value


def readable_types(access: AccessPolicy, candidates: set[str]) -> set[str]:
    """The types some grant of the token may read (per-resource checks still follow while reading)."""
    if isinstance(access, SystemAccess):
        return candidates
    if not isinstance(access, AccessContext):
        return set()
    return {t for t in candidates
            if any(s.covers_type(t) and ("r" in s.permissions or "s" in s.permissions) for s in access.scopes)}


def export_params(req: FhirRequest, repo: Repository, level: str, group_id: str | None,
                  access: AccessPolicy, validate_filter: Any) -> dict[str, Any]:
    """``validate_filter(repo, type, params)`` runs a search criterion once so a bad _typeFilter is a 400."""
    types: list[str] | None = None
    since: str | None = None
    filters: dict[str, list[str]] = {}
    patients: list[str] | None = None
    allowed = compartment_types() if level != "system" else set(resource_types())
    for name, value in _parameters(req):
        if name not in KNOWN:
            raise FhirError(400, NOT_SUPPORTED, f"Bulk export parameter {name} is not supported", (name,))
        if name == "_outputFormat":
            if value not in OUTPUT_FORMATS:
                raise bad_request(f"_outputFormat {value!r} is not supported (use {NDJSON})", ("_outputFormat",))
        elif name == "_since":
            since = parse_instant(str(value), "_since").isoformat()
        elif name == "_type":
            for t in str(value).split(","):
                t = t.strip()
                if t not in allowed:
                    where = "" if level == "system" else " in the Patient compartment"
                    raise bad_request(f"_type {t!r} is not a resource type{where}", ("_type",))
                types = [*(types or []), t] if t not in (types or []) else types
        elif name == "_typeFilter":
            rtype, _, query = str(value).partition("?")
            if rtype not in allowed or not query:
                raise bad_request(f"_typeFilter {value!r} must be Type?search-parameters", ("_typeFilter",))
            validate_filter(repo, rtype, parse_qsl(query, keep_blank_values=True))
            filters.setdefault(rtype, []).append(query)
        elif name == "patient":
            if level == "system":
                raise bad_request("patient is only allowed at Patient and Group level", ("patient",))
            ref = value.get("reference", "") if isinstance(value, dict) else str(value)
            if not ref.startswith("Patient/"):
                raise bad_request(f"patient {ref!r} is not a Patient reference", ("patient",))
            patients = [*(patients or []), ref.split("/", 1)[1]]
    if types is not None and filters:
        for rtype in filters:
            if rtype not in types:
                raise bad_request(f"_typeFilter names {rtype}, which _type leaves out", ("_typeFilter",))
    if types is not None:
        refused = [t for t in types if t not in readable_types(access, {t})]
        if refused:
            raise FhirError(403, FORBIDDEN, f"The access token does not permit reading {', '.join(refused)}",
                            ("_type",))
    if level == "group" and group_id is not None:
        group = repo.read("Group", group_id).content or {}  # 404 / 410 / 403 as for a read
        members = [m.get("entity", {}).get("reference", "") for m in group.get("member", [])
                   if not m.get("inactive")]
        ids = [r.split("/", 1)[1] for r in members if r.startswith("Patient/")]
        patients = ids if patients is None else [p for p in patients if p in ids]
    return {"level": level, "group": group_id, "types": types, "since": since, "type_filters": filters,
            "patients": patients, "output_format": NDJSON}

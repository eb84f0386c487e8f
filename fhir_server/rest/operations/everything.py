"""``Patient/[id]/$everything`` (OperationDefinition patient-everything): the patient, every resource in its
compartment (the R4 CompartmentDefinition for Patient), and what those reference (search mode ``include``),
as one searchset paged by cursor like a system-level search.

Parameters: ``_since`` (changed at or after that instant), ``_type`` (member types to return), ``_count``; other
search result parameters pass through (``_elements``, ``_summary``). ``start``/``end`` (care dates) are not
applied, and say so in the Bundle's OperationOutcome entry. Access: the patient is read first (403/404/410 as
for a read), every page goes through the access filters of search, and included resources the token may not
read are left out, so a patient-scoped token sees only its own record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, NOT_SUPPORTED, FhirError, Issue, operation_outcome
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.rest.search import search_types
from fhir_server.search.compartment import compartment_criterion, compartment_params
from fhir_server.search.parser import AnyCriterion, CompartmentCriterion

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
NOT_APPLIED = ("start", "end")


def _parameters(req: FhirRequest) -> list[tuple[str, str]]:
    """The query, plus a POSTed Parameters resource's primitive values."""
    pairs = list(req.query)
    if req.method == "POST" and (req.body or req.resource is not None):
        body = req.json_body()
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirError(400, INVALID, "The body of $everything must be a Parameters resource", ("Parameters",))
        for p in body.get("parameter") or []:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if isinstance(p.get("name"), str) and value is not None:
                pairs.append((p["name"], str(value)))
    return pairs


class Everything:
    def __init__(self, default_count: int, max_count: int) -> None:
        self.default_count = default_count
        self.max_count = max_count

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        if resource_id is None:
            raise FhirError(400, NOT_SUPPORTED, "$everything runs on one patient: GET [base]/Patient/[id]/$everything "
                                                "(for many patients use Bulk Data Patient/$export)")
        repo.read("Patient", resource_id)  # the caller may read this patient, or the read refuses
        members = compartment_params()["Patient"]
        pairs = _parameters(req)
        wanted = [t.strip() for k, v in pairs if k == "_type" for t in v.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in resource_types()]
        if unknown:
            raise FhirError(400, INVALID, f"Unknown resource type(s) in _type: {', '.join(unknown)}", ("_type",))
        types = [t for t in (wanted or sorted(members)) if t in members]
        if not types:
            raise FhirError(400, INVALID, "None of the _type values are in the Patient compartment", ("_type",))
        extra: dict[str, list[AnyCriterion]] = {t: [compartment_criterion("Patient", resource_id, t)] for t in types}
        if "Patient" in extra:  # the patient itself, besides the patients linked to it
            linked = compartment_criterion("Patient", resource_id, "Patient")
            extra["Patient"] = [CompartmentCriterion("Patient", resource_id, linked.params, itself=True)]
        params: list[tuple[str, str]] = []
        for name, value in pairs:
            if name == "_since":
                params.append(("_lastUpdated", f"ge{value}"))
            elif name not in ("_type", *NOT_APPLIED):
                params.append((name, value))
        if not any(name.startswith("_include") for name, _ in params):
            params.append(("_include", "*"))  # what the record references: practitioners, medications, ...
        resp = search_types(req, repo, f"Patient/{resource_id}/$everything", params, extra,
                            default_count=self.default_count, max_count=self.max_count)
        ignored = [name for name, _ in pairs if name in NOT_APPLIED]
        if ignored and isinstance(resp.resource, dict):
            resp.resource.setdefault("entry", []).append(_not_applied(ignored))
        return resp


def _not_applied(names: list[str]) -> dict[str, Any]:
    return {"resource": operation_outcome([
        Issue(NOT_SUPPORTED, f"'{n}' is not applied by $everything yet; ignored", severity="warning",
              expression=(n,)) for n in dict.fromkeys(names)]), "search": {"mode": "outcome"}}


def register(server: FhirServer) -> None:
    s = server.settings
    server.operations.register(Operation("everything", Everything(s.default_page_size, s.max_page_size), DEFINITION,
                                         types=frozenset({"Patient"}), instance=True))

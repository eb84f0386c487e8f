"""The master patient index (issue 17 item 2): ``Patient/$match`` (patient-operation-match.html) and the
possible-duplicate check on every Patient create.

Candidates come from the database: the patients sharing most blocking keys with the query
(``frontdesk_match_key``, rewritten with each Patient write), at most ``candidates`` of them, read with the
caller's access (what it may not search is never scored). Each is scored (scoring.py) and graded.

A create whose best candidate scores at least ``duplicateWarning`` still succeeds, with a warning issue
(rule code ``patient-possible-duplicate``) in its OperationOutcome: the body with ``Prefer: return=
OperationOutcome``, ``Bundle.entry.response.outcome`` in a batch or transaction. ``Prefer: handling=strict``
turns it into a 409 refusal; a conditional create (``If-None-Exist``) is not checked: its criteria say what
a duplicate is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from fhir_server.errors import FORBIDDEN, INVALID, FhirError
from fhir_server.hooks import WriteEvent
from fhir_server.rest.request import CURRENT_REQUEST, FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository, Version
from fhir_server.workflows.frontdesk.registration import merged
from fhir_server.workflows.frontdesk.scoring import MATCH_GRADE, Score, blocking_keys, match_config, score
from fhir_server.workflows.frontdesk.tables import MATCH_KEY
from fhir_server.workflows.rules import rule_issue, rule_violation

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Patient-match"
GRADE_ORDER = {"certain": 0, "probable": 1, "possible": 2, "certainly-not": 3}


def candidates(repo: Repository, patient: dict[str, Any], mrn_system: str, *,
               exclude: str | None = None) -> list[tuple[Version, Score]]:
    """Scored candidates, best first: the patients filed under most of the query's blocking keys."""
    keys = sorted(blocking_keys(patient, mrn_system))
    if not keys:
        return []
    hits = func.count().label("hits")
    stmt = select(MATCH_KEY.c.patient_id, hits).where(MATCH_KEY.c.key.in_(keys))
    if exclude is not None:
        stmt = stmt.where(MATCH_KEY.c.patient_id != exclude)
    stmt = stmt.group_by(MATCH_KEY.c.patient_id).order_by(hits.desc(), MATCH_KEY.c.patient_id) \
        .limit(match_config().candidates)
    ids = [row.patient_id for row in repo.execute(stmt)]
    found = repo.read_many([("Patient", i) for i in ids])  # auth: only what the caller may search
    scored = [(v, score(patient, v.content or {}, mrn_system)) for v in found if not merged(v.content or {})]
    return sorted(scored, key=lambda vs: (-vs[1].score, vs[0].id))


class PatientIndex:
    """Write hooks: the duplicate check on create, and the blocking keys kept in step with each Patient."""

    def __init__(self, mrn_system: str) -> None:
        self.mrn_system = mrn_system

    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Patient" or repo is None or event.resource_id is None:
            return
        patient = event.resource
        if event.interaction == "create" and patient is not None:
            self._check_duplicate(repo, patient, event.resource_id)
        if event.previous is not None:  # a first version has no keys to replace
            repo.execute(delete(MATCH_KEY).where(MATCH_KEY.c.patient_id == event.resource_id))
        if patient is not None and not merged(patient):
            for key in sorted(blocking_keys(patient, self.mrn_system)):
                repo.defer_insert(MATCH_KEY, {"key": key, "patient_id": event.resource_id})

    def _check_duplicate(self, repo: Repository, patient: dict[str, Any], patient_id: str) -> None:
        req = CURRENT_REQUEST.get()
        if req is not None and req.header("if-none-exist"):
            return
        found = candidates(repo, patient, self.mrn_system, exclude=patient_id)
        cfg = match_config()
        likely = [(v, s) for v, s in found if s.score >= cfg.warn and s.grade != "certainly-not"]
        if not likely:
            return
        best = ", ".join(f"{v.reference} (score {s.score}, {s.grade})" for v, s in likely[:3])
        text = f"This patient may already be registered: {best}. Use Patient/$match to compare, or $merge"
        if req is None:  # no client to warn (an HL7 v2 feed's own registration): $match finds it later
            return
        if (req.prefer("handling") or "").lower() == "strict":
            raise rule_violation(409, "patient-possible-duplicate", text, ("Patient",), code="duplicate")
        req.warnings.append(rule_issue("patient-possible-duplicate", text, ("Patient",), code="duplicate",
                                       severity="warning"))


def _parameters(req: FhirRequest) -> tuple[dict[str, Any], bool, int | None]:
    body = req.json_body()
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, INVALID, "The body of $match must be a Parameters resource", ("Parameters",))
    patient: dict[str, Any] | None = None
    only_certain, count = False, None
    for i, p in enumerate(body.get("parameter") or []):
        if not isinstance(p, dict):
            continue
        name = p.get("name")
        if name == "resource":
            patient = p.get("resource")
            if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
                raise FhirError(400, INVALID, "The 'resource' parameter must be a Patient",
                                (f"Parameters.parameter[{i}].resource",))
        elif name == "onlyCertainMatches":
            if not isinstance(p.get("valueBoolean"), bool):
                raise FhirError(400, INVALID, "onlyCertainMatches is a boolean",
                                (f"Parameters.parameter[{i}].valueBoolean",))
            only_certain = p["valueBoolean"]
        elif name == "count":
            if not isinstance(p.get("valueInteger"), int) or p["valueInteger"] < 1:
                raise FhirError(400, INVALID, "count is a positive integer",
                                (f"Parameters.parameter[{i}].valueInteger",))
            count = p["valueInteger"]
    if patient is None:
        raise FhirError(400, INVALID, "$match needs the 'resource' parameter: the Patient to match", ("Parameters",))
    return patient, only_certain, count


class Match:
    """``POST [base]/Patient/$match``: a searchset of scored candidates, best first."""

    def __init__(self, mrn_system: str, max_count: int) -> None:
        self.mrn_system = mrn_system
        self.max_count = max_count

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        if not repo.access.may("Patient", "s"):  # auth: matching is a search of Patients
            raise FhirError(403, FORBIDDEN, "$match searches Patients: the token does not permit it", ("Patient",))
        patient, only_certain, count = _parameters(req)
        found = [(v, s) for v, s in candidates(repo, patient, self.mrn_system)
                 if s.score >= match_config().possible and s.grade != "certainly-not"]
        if only_certain:
            certain = [(v, s) for v, s in found if s.grade == "certain"]
            found = certain if len(certain) == 1 else []  # several certain: none is, the spec says
        found = found[:min(count or self.max_count, self.max_count)]
        base = req.base_url
        entries = [{"fullUrl": f"{base}/{v.reference}", "resource": v.content,
                    "search": {"mode": "match", "score": s.score,
                               "extension": [{"url": MATCH_GRADE, "valueCode": s.grade}]}} for v, s in found]
        return FhirResponse(200, {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                  "link": [{"relation": "self", "url": f"{base}/Patient/$match"}],
                                  "entry": entries})

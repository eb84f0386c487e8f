"""Prescribing rules on MedicationRequest (issue 18 item 1).

- Only doctors prescribe: a user token's role must be ``doctor`` to create a MedicationRequest or change what
  it prescribes; a backend service may (an e-prescribing interface) when ``requester`` names a Practitioner.
- A prescription is valid 30 days (rules.json): ``dispenseRequest.validityPeriod`` is set when absent and
  refused when longer.
- Checked in the write's transaction against the patient's AllergyIntolerances (substance and ATC class),
  active MedicationRequests (duplicate therapy: same substance, same class) and the interaction table
  (knowledge.py). Each finding is a DetectedIssue implicating the request; a high-severity finding refuses
  the write (409) unless a doctor overrides it with a reason (the OVERRIDE extension), which is recorded as
  the DetectedIssue's mitigation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.workflows.pharmacy.common import (
    ACT_CODE,
    OVERRIDE,
    SAFETY_REASON,
    codings,
    extension,
    is_local,
    now,
    parse_time,
    practitioner_of,
    ref_id,
    role_of,
    stamp,
)
from fhir_server.workflows.pharmacy.knowledge import Knowledge, Tables
from fhir_server.workflows.rules import rule_issue, rule_violation

MR = "MedicationRequest"
# What a prescription prescribes: only a doctor writes or changes these (a pharmacist may change the status).
PRESCRIBED = ("medicationCodeableConcept", "medicationReference", "subject", "dosageInstruction", "dispenseRequest",
              "intent", "requester", "substitution")
CHECKED_STATUSES = ("active", "on-hold", "draft")
ALERT = {"allergy": ("ALGY", "Allergy Alert"), "duplicate": ("DUPTHPY", "Duplicate Therapy Alert"),
         "interaction": ("DRG", "Drug Interaction Alert")}
RULE = {"allergy": "medication-allergy", "duplicate": "medication-duplicate-therapy",
        "interaction": "medication-interaction"}


@dataclass(frozen=True)
class Drug:
    """A drug as the checks see it: its codings and the ATC codes they map to."""
    codes: frozenset[tuple[str, str]]
    atc: frozenset[str]
    label: str


@dataclass(frozen=True)
class Finding:
    kind: str  # allergy | duplicate | interaction
    severity: str
    detail: str
    other: str  # AllergyIntolerance/1, MedicationRequest/2


def before_validate(event: WriteEvent, repo: Repository | None, knowledge: Knowledge) -> None:
    if event.resource_type != MR or event.resource is None or repo is None:
        return
    resource, previous = event.resource, event.previous.content if event.previous else None
    prescribes = previous is None or any(resource.get(k) != previous.get(k) for k in PRESCRIBED)
    if prescribes:
        _check_prescriber(repo, resource)
    override = extension(resource, OVERRIDE)
    if override is not None and override != (extension(previous, OVERRIDE) if previous else None):
        if not str(override.get("valueString") or "").strip():
            raise rule_violation(422, "medication-override-reason", "A safety override needs the doctor's reason "
                                 "(extension valueString)", (f"{MR}.extension",))
        if not is_local(repo.access) and role_of(repo.access) != "doctor":
            raise rule_violation(403, "medication-override-not-doctor", "Only a doctor may override a "
                                 "medication safety alert", (f"{MR}.extension",), code="forbidden")
    if previous is None:
        resource.setdefault("authoredOn", stamp(now()))
    if prescribes:
        _validity(resource, knowledge.rules.validity_days)


def _check_prescriber(repo: Repository, resource: dict[str, Any]) -> None:
    access = repo.access
    if is_local(access):
        return
    role = role_of(access)
    if role is None:  # a backend service: it prescribes for someone
        if ref_id(resource.get("requester"), "Practitioner") is None:
            raise rule_violation(422, "prescription-requester", "A prescription sent by a system names the "
                                 "prescribing doctor as requester (a Practitioner)", (f"{MR}.requester",))
        return
    if role != "doctor":
        raise rule_violation(403, "prescriber-not-doctor", f"Only doctors prescribe (this user is a {role})",
                             (MR,), code="forbidden")
    practitioner = practitioner_of(access)
    if practitioner and "requester" not in resource:
        resource["requester"] = {"reference": practitioner}


def _validity(resource: dict[str, Any], days: int) -> None:
    request = resource.setdefault("dispenseRequest", {})
    if not isinstance(request, dict):
        return
    period = request.setdefault("validityPeriod", {})
    if not isinstance(period, dict):
        return  # validation names the malformed element
    start_text = period.get("start") or resource.get("authoredOn") or stamp(now())
    start = parse_time(start_text)
    if start is None:
        return  # validation names the malformed date
    period["start"] = start_text
    limit = start + timedelta(days=days)
    end = parse_time(period.get("end"), end=True)
    if end is None:
        period["end"] = stamp(limit)
    elif end > limit + timedelta(seconds=1):
        raise rule_violation(422, "prescription-validity", f"A prescription is valid at most {days} days from "
                             f"{start_text}", (f"{MR}.dispenseRequest.validityPeriod.end",))


def before_commit(event: WriteEvent, repo: Repository | None, knowledge: Knowledge) -> None:
    """The safety checks, once the request has its id (so the DetectedIssues can implicate it)."""
    if event.resource_type != MR or event.resource is None or repo is None or event.version is None:
        return
    resource, previous = event.resource, event.previous.content if event.previous else None
    if resource.get("status") not in CHECKED_STATUSES:
        return
    changed = previous is None or previous.get("status") not in CHECKED_STATUSES or any(
        resource.get(k) != previous.get(k) for k in ("medicationCodeableConcept", "medicationReference", "subject"))
    patient = ref_id(resource.get("subject"), "Patient")
    if not changed or patient is None:
        return
    caller = repo.access
    with repo.acting_as(as_system(SAFETY_REASON)):
        findings = _findings(repo, knowledge, resource, patient, event.version.id)
        if not findings:
            return
        override = extension(resource, OVERRIDE)
        reason = str(override.get("valueString") or "").strip() if override else ""
        blocking = [f for f in findings if f.severity == "high"]
        if blocking and not reason:
            where = (f"{MR}.medicationReference" if "medicationReference" in resource
                     else f"{MR}.medicationCodeableConcept",)
            issues = [rule_issue(RULE[f.kind], f"{f.detail} ({f.other}); a doctor may override with a reason "
                                 f"(extension {OVERRIDE})", where) for f in blocking]
            issues += [rule_issue(RULE[f.kind], f"{f.detail} ({f.other})", where, severity="warning")
                       for f in findings if f.severity != "high"]
            raise FhirError(409, issues)
        for finding in findings:
            repo.create("DetectedIssue", _detected_issue(finding, patient, event.version.reference, reason,
                                                         practitioner_of(caller)))


def _findings(repo: Repository, knowledge: Knowledge, resource: dict[str, Any], patient: str,
              own_id: str) -> list[Finding]:
    tables = knowledge.tables(repo)
    drug = _drug(repo, tables, resource)
    if not drug.codes:
        return []
    out: list[Finding] = []
    subject = f"Patient/{patient}"
    allergies = repo.read_many([("AllergyIntolerance", i) for i in
                                repo.find_ids("AllergyIntolerance", [("patient", subject)], limit=500)])
    for allergy in allergies:
        out.extend(_allergy(tables, drug, allergy.content or {}, allergy.reference))
    current = repo.read_many([(MR, i) for i in repo.find_ids(
        MR, [("patient", subject), ("status", "active,on-hold")], limit=500) if i != own_id])
    for other in current:
        content = other.content or {}
        end = parse_time(((content.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end"), end=True)
        if end is not None and end < now():
            continue  # an expired prescription is no longer current therapy
        theirs = _drug(repo, tables, content)
        out.extend(_duplicate(knowledge, drug, theirs, other.reference))
        for pair in tables.interactions:
            if any(_meets(pair.a, pair.b, x, y) for x in drug.atc for y in theirs.atc):
                out.append(Finding("interaction", pair.severity, f"{pair.display} with {theirs.label}: "
                                   f"{pair.definition} [{pair.code}]", other.reference))
    return out


def _drug(repo: Repository, tables: Tables, resource: dict[str, Any]) -> Drug:
    concepts = [resource.get("medicationCodeableConcept")]
    medication_id = ref_id(resource.get("medicationReference"), "Medication")
    if medication_id is not None:
        for med in repo.read_many([("Medication", medication_id)]):
            content = med.content or {}
            concepts.append(content.get("code"))
            concepts += [i.get("itemCodeableConcept") for i in content.get("ingredient") or [] if isinstance(i, dict)]
    codes = frozenset(c for concept in concepts for c in codings(concept))
    atc = frozenset(a for system, code in codes for a in tables.to_atc(system, code))
    label = next((str(c.get("text") or (c.get("coding") or [{}])[0].get("display") or "")
                  for c in concepts if isinstance(c, dict)), "") or next(iter(sorted(codes)), ("", "?"))[1]
    return Drug(codes, atc, label)


def _allergy(tables: Tables, drug: Drug, allergy: dict[str, Any], reference: str) -> list[Finding]:
    if any(c in ("inactive", "resolved") for _, c in codings(allergy.get("clinicalStatus"))):
        return []
    if any(c in ("refuted", "entered-in-error") for _, c in codings(allergy.get("verificationStatus"))):
        return []
    reactions = [r for r in allergy.get("reaction") or [] if isinstance(r, dict)]
    concepts = [allergy.get("code")] + [r.get("substance") for r in reactions]
    codes = {c for concept in concepts for c in codings(concept)}
    atc = {a for system, code in codes for a in tables.to_atc(system, code)}
    what = next((str(c.get("text") or (c.get("coding") or [{}])[0].get("display") or "")
                 for c in concepts if isinstance(c, dict)), "") or "a recorded allergen"
    severity = "moderate" if allergy.get("criticality") == "low" else "high"
    if codes & drug.codes or atc & drug.atc:
        return [Finding("allergy", severity, f"{drug.label} and the patient's allergy to {what}", reference)]
    classes = sorted(a for a in atc if len(a) < 7 and any(d.startswith(a) for d in drug.atc))
    if classes:
        return [Finding("allergy", severity, f"{drug.label} belongs to ATC class {classes[0]}, to which the "
                                             f"patient is allergic ({what})", reference)]
    return []


def _duplicate(knowledge: Knowledge, mine: Drug, theirs: Drug, reference: str) -> list[Finding]:
    if mine.codes & theirs.codes or mine.atc & theirs.atc:
        return [Finding("duplicate", "high", f"{mine.label} duplicates the active prescription of {theirs.label} "
                                             f"(same substance)", reference)]
    rules = knowledge.rules
    for x in mine.atc:
        for y in theirs.atc:
            shared = [c for c in rules.duplicate_classes if x.startswith(c) and y.startswith(c)]
            if x[:rules.duplicate_class_length] == y[:rules.duplicate_class_length] or shared:
                cls = shared[0] if shared else x[:rules.duplicate_class_length]
                return [Finding("duplicate", "moderate", f"{mine.label} and the active prescription of "
                                                         f"{theirs.label} are in the same class (ATC {cls})",
                                reference)]
    return []


def _meets(a: str, b: str, x: str, y: str) -> bool:
    return (x.startswith(a) and y.startswith(b)) or (x.startswith(b) and y.startswith(a))


def _detected_issue(finding: Finding, patient: str, request: str, reason: str,
                    practitioner: str | None) -> dict[str, Any]:
    code, display = ALERT[finding.kind]
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue", "status": "final",
        "code": {"coding": [{"system": ACT_CODE, "code": code, "display": display}]},
        "severity": finding.severity, "patient": {"reference": f"Patient/{patient}"},
        "identifiedDateTime": stamp(now()),
        "implicated": [{"reference": request}, {"reference": finding.other}],
        "detail": finding.detail,
    }
    if reason:  # the doctor's override, recorded on every finding the prescription went ahead with
        mitigation: dict[str, Any] = {"action": {"coding": [{"system": ACT_CODE, "code": "1",
                                                             "display": "Therapy Appropriate"}], "text": reason},
                                      "date": stamp(now())}
        if practitioner:
            mitigation["author"] = {"reference": practitioner}
        issue["mitigation"] = [mitigation]
    return issue

"""Demo and test records: a patient with cover, an admission, a document, a pre-authorisation and a claim,
all conforming to the NRCeS 6.5.0 profiles -- and another patient's admission beside them, which must never
leave the hospital."""

from __future__ import annotations

from typing import Any

PROVIDER = "hospital01@sandbox"
PAYER = "payer01@sandbox"
CODE_SYSTEM = "https://hcxprotocol.io/participant_code"
NDHM_ID = "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-identifier-type-code"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _identifier(system: str, value: str, type_system: str, code: str, display: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": type_system, "code": code, "display": display}]}, "system": system,
            "value": value}


def org(rid: str, name: str, code: str | None = None) -> dict[str, Any]:
    """An Organization as NRCeS wants it (typed identifiers); a payer also carries its participant code."""
    ids = [_identifier("https://facility.ndhm.gov.in", f"F-{rid}", V2_0203, "PRN", "Provider number")]
    if code:
        ids = [_identifier(CODE_SYSTEM, code, NDHM_ID, "ROHINI", "Registry of Hospitals in Network of Insurance "
                                                                "(ROHINI) ID")]
    return {"resourceType": "Organization", "id": rid, "name": name, "active": True, "identifier": ids}


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def records(suffix: str) -> list[dict[str, Any]]:
    """A patient with cover, an admission, a document, a pre-authorisation and a claim (all conforming to the
    NRCeS 6.5.0 profiles) -- and another patient's admission next to them, which must never leave."""
    pid, other = f"pat-{suffix}", f"other-{suffix}"
    abha = ("https://healthid.abdm.gov.in", NDHM_ID, "ABHA", "Ayushman Bharat Health Account (ABHA) ID")
    patient = {"resourceType": "Patient", "id": pid, "name": [{"text": "Asha Sharma", "family": "Sharma"}],
               "gender": "female", "birthDate": "1980-04-02",
               "identifier": [_identifier(abha[0], "91-1234-5678-9012", *abha[1:])]}
    bystander = {"resourceType": "Patient", "id": other, "name": [{"text": "Ravi Bystander"}],
                 "identifier": [_identifier(abha[0], "91-9999-8888-7777", *abha[1:])]}
    doctor = {"resourceType": "Practitioner", "id": f"dr-{suffix}", "name": [{"text": "Dr. Meera Rao"}],
              "identifier": [_identifier("https://doctor.ndhm.gov.in", "21-1521-3828-3227", V2_0203, "MD",
                                         "Medical License number")]}
    ward = {"resourceType": "Location", "id": f"ward-{suffix}", "status": "active", "name": "Surgical ward"}
    coverage = {"resourceType": "Coverage", "id": f"cov-{suffix}", "status": "active",
                "identifier": [{"system": "https://payer01.example/policy", "value": "POL-778899"}],
                "type": _coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP",
                                "health insurance plan policy"),
                "subscriber": {"reference": f"Patient/{pid}"}, "subscriberId": "POL-778899",
                "beneficiary": {"reference": f"Patient/{pid}"},
                "payor": [{"reference": f"Organization/payer-{suffix}"}],
                "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                             "code": "self"}]}}
    encounter = {"resourceType": "Encounter", "id": f"enc-{suffix}", "status": "in-progress",
                 "identifier": [{"system": "https://hospital01.example/encounter", "value": f"IP-{suffix}"}],
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                           "display": "inpatient encounter"},
                 "subject": {"reference": f"Patient/{pid}"}}
    other_encounter = {"resourceType": "Encounter", "id": f"enc-other-{suffix}", "status": "finished",
                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                       "subject": {"reference": f"Patient/{other}"}}
    document = {"resourceType": "DocumentReference", "id": f"doc-{suffix}", "status": "current",
                "subject": {"reference": f"Patient/{pid}"},
                "type": _coding("http://snomed.info/sct", "4241000179101", "Laboratory report"),
                "content": [{"attachment": {"contentType": "text/plain", "title": "Admission note",
                                            "data": "QWRtaXR0ZWQgZm9yIGFwcGVuZGljaXRpcw=="}}]}
    priority = _coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal")
    eligibility = {"resourceType": "CoverageEligibilityRequest", "id": f"cer-{suffix}", "status": "active",
                   "identifier": [{"value": f"CER-{suffix}"}], "priority": priority,
                   "purpose": ["validation"], "patient": {"reference": f"Patient/{pid}"}, "created": "2026-12-07",
                   "enterer": {"reference": f"Practitioner/dr-{suffix}"},
                   "facility": {"reference": f"Location/ward-{suffix}"},
                   "insurer": {"reference": f"Organization/payer-{suffix}"},
                   "provider": {"reference": f"Organization/hosp-{suffix}"},
                   "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/cov-{suffix}"}}]}

    def claim(cid: str, use: str, amount: float) -> dict[str, Any]:
        return {"resourceType": "Claim", "id": cid, "status": "active", "use": use,
                "identifier": [{"system": "https://hospital01.example/claim", "value": cid}],
                "type": _coding("http://terminology.hl7.org/CodeSystem/claim-type", "institutional", "Institutional"),
                "patient": {"reference": f"Patient/{pid}"}, "created": "2026-12-07",
                "insurer": {"reference": f"Organization/payer-{suffix}"},
                "provider": {"reference": f"Organization/hosp-{suffix}"}, "priority": priority,
                "diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": _coding(
                    "http://hl7.org/fhir/sid/icd-10", "K35.8", "Acute appendicitis, other and unspecified"),
                    "type": [_coding("http://snomed.info/sct", "89100005", "Final diagnosis (discharge)")]}],
                "supportingInfo": [{"sequence": 1, "category": _coding(
                    "http://terminology.hl7.org/CodeSystem/claiminformationcategory", "attachment", "Attachment"),
                    "code": _coding("http://snomed.info/sct", "371530004", "Clinical consultation report"),
                    "valueReference": {"reference": f"DocumentReference/doc-{suffix}"}}],
                "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/cov-{suffix}"}}],
                "item": [{"sequence": 1, "productOrService": _coding("http://snomed.info/sct", "80146002",
                                                                     "Appendectomy"),
                          "encounter": [{"reference": f"Encounter/enc-{suffix}"}],
                          "net": {"value": amount, "currency": "INR"}}],
                "total": {"value": amount, "currency": "INR"}}

    invoice = {"resourceType": "Invoice", "id": f"inv-{suffix}", "status": "issued",
               "subject": {"reference": f"Patient/{pid}"}, "issuer": {"reference": f"Organization/hosp-{suffix}"},
               "date": "2026-12-07",
               "lineItem": [{"sequence": 1, "chargeItemCodeableConcept": _coding("http://snomed.info/sct", "80146002",
                                                                                 "Appendectomy"),
                             "priceComponent": [{"type": "base", "amount": {"value": 70000.0, "currency": "INR"}}]},
                            {"sequence": 2, "chargeItemCodeableConcept": _coding("http://snomed.info/sct", "309904001",
                                                                                 "Intensive care unit"),
                             "priceComponent": [{"type": "base", "amount": {"value": 12500.0, "currency": "INR"}}]}],
               "totalNet": {"value": 82500.0, "currency": "INR"}, "totalGross": {"value": 82500.0, "currency": "INR"}}
    return [org(f"payer-{suffix}", "Payer One", PAYER), org(f"hosp-{suffix}", "Hospital One"), patient, bystander,
            doctor, ward, coverage, encounter, other_encounter, document, eligibility,
            claim(f"pre-{suffix}", "preauthorization", 85000.0), claim(f"final-{suffix}", "claim", 82500.0), invoice]



"""The remote HIP's records (when our hospital is the HIU): two small NRCeS documents for one patient,
care context SIM-CC-1 (an OP consultation) and SIM-CC-2 (a prescription)."""

from __future__ import annotations

from typing import Any

PROFILE = "https://nrces.in/ndhm/fhir/r4/StructureDefinition/"
SNOMED = "http://snomed.info/sct"


def _document(name: str, hi_profile: str, type_code: str, type_display: str, when: str, address: str,
              section: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": f"{name}-patient",
               "identifier": [{"system": "https://healthid.ndhm.gov.in/abha-address", "value": address}],
               "name": [{"text": "Hina Patel"}], "gender": "female", "birthDate": "1979-03-02"}
    org = {"resourceType": "Organization", "id": f"{name}-org", "name": "Simulated Remote Hospital",
           "identifier": [{"system": "https://facility.ndhm.gov.in", "value": "SIM-HIP"}]}
    composition = {"resourceType": "Composition", "id": f"{name}-composition",
                   "meta": {"profile": [PROFILE + hi_profile]},
                   "status": "final", "type": {"coding": [{"system": SNOMED, "code": type_code,
                                                           "display": type_display}]},
                   "subject": {"reference": f"urn:uuid:{name}-patient"}, "date": when,
                   "author": [{"reference": f"urn:uuid:{name}-org"}], "title": type_display,
                   "section": [{**section, "entry": [{"reference": f"urn:uuid:{resource['id']}",
                                                      "type": resource["resourceType"]}]}]}
    return {"resourceType": "Bundle", "id": name, "meta": {"versionId": "1", "profile": [PROFILE + "DocumentBundle"]},
            "identifier": {"system": "https://sim-hip.example/documents", "value": f"{name}:{address}"},
            "type": "document", "timestamp": when,
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r}
                      for r in (composition, patient, org, resource)]}


def remote_documents(hi_types: list[str], address: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    if "OPConsultation" in hi_types:
        condition = {"resourceType": "Condition", "id": "sim-op-condition",
                     "code": {"text": "Fever"}, "subject": {"reference": "urn:uuid:sim-op-patient"},
                     "recordedDate": "2024-03-01"}
        out.append(("SIM-CC-1", _document("sim-op", "OPConsultRecord", "371530004", "Clinical consultation report",
                                          "2024-03-01T10:00:00+05:30", address,
                                          {"title": "Chief complaints", "code": {"coding": [
                                              {"system": SNOMED, "code": "422843007",
                                               "display": "Chief complaint section"}]}}, condition)))
    if "Prescription" in hi_types:
        order = {"resourceType": "MedicationRequest", "id": "sim-rx-order", "status": "active", "intent": "order",
                 "medicationCodeableConcept": {"text": "Paracetamol 500 mg"},
                 "subject": {"reference": "urn:uuid:sim-rx-patient"}, "authoredOn": "2024-03-01"}
        out.append(("SIM-CC-2", _document("sim-rx", "PrescriptionRecord", "440545006", "Prescription record",
                                          "2024-03-01T10:05:00+05:30", address,
                                          {"title": "Prescription record", "code": {"coding": [
                                              {"system": SNOMED, "code": "440545006",
                                               "display": "Prescription record"}]}}, order)))
    return out

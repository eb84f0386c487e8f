"""ABDM over real HTTP: the simulator (gateway, consent manager, remote HIU and HIP) in its own process drives
our HIP endpoints and serves our HIU; what it received and decrypted is inspected here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhir_server.rest.request import FhirRequest
from fhir_server.storage.access import as_system
from interfaces.abdm import hip as hip_module
from interfaces.abdm.identity import ABHA_ADDRESS_SYSTEM, ABHA_NUMBER_SYSTEM
from tests.conftest import make_backend, wait_until
from tests.integration.abdm_support import HIP_ID, Hospital, Simulator, start_hospital, start_simulator

DISCOVER = "/api/v3/hip/patient/care-context/discover"
LINK_INIT = "/api/v3/hip/link/care-context/init"
LINK_CONFIRM = "/api/v3/hip/link/care-context/confirm"
NOTIFY = "/data-flow/v3/health-information/notify"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    yield from start_simulator()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(request: pytest.FixtureRequest, sim: Simulator, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Hospital]:
    for backend in make_backend(request.param, tmp_path_factory.mktemp(f"abdm-{request.param}")):
        for h in start_hospital(backend, sim):
            HOSPITALS[:] = [h]
            yield h


def _visit_data(h: Hospital, address: str | None = None) -> dict[str, Any]:
    """A patient with two visits: E1 in March 2024 (diagnosis, vitals, prescription, lab report) and E2 in
    2022 (a diagnosis), and a standalone lab report in 2024."""
    handle = f"hina{uuid.uuid4().hex[:8]}"
    identifiers = [{"system": ABHA_NUMBER_SYSTEM, "value": f"91-{uuid.uuid4().int % 10**4:04d}-1234-5678"}]
    if address:
        identifiers.append({"system": ABHA_ADDRESS_SYSTEM, "value": address})
    pid = h.create({"resourceType": "Patient", "identifier": identifiers, "name": [{"text": f"Hina {handle}"}],
                    "gender": "female", "birthDate": "1979-03-02", "telecom": [{"system": "phone",
                                                                                "value": "+919800083232"}]})
    subject = {"reference": f"Patient/{pid}"}
    e1 = h.create({"resourceType": "Encounter", "status": "finished", "class": {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject,
        "type": [{"text": "General OPD"}], "period": {"start": "2024-03-01T10:00:00+05:30"}})
    e2 = h.create({"resourceType": "Encounter", "status": "finished", "class": {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject,
        "period": {"start": "2022-06-01T10:00:00+05:30"}})
    ref1, ref2 = {"reference": f"Encounter/{e1}"}, {"reference": f"Encounter/{e2}"}
    doctor = h.create({"resourceType": "Practitioner", "name": [{"prefix": ["Dr."], "given": ["Manju"]}],
                       "identifier": [{"system": "https://doctor.ndhm.gov.in", "value": "21-1521-3828-3227"}]})
    h.create({"resourceType": "Condition", "subject": subject, "encounter": ref1, "code": {"text": "Fever"},
              "recordedDate": "2024-03-01"})
    h.create({"resourceType": "Observation", "status": "final", "subject": subject, "encounter": ref1,
              "code": {"text": "Body temperature"}, "effectiveDateTime": "2024-03-01T10:10:00+05:30",
              "valueQuantity": {"value": 38.5, "unit": "Cel"}})
    h.create({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject,
              "encounter": ref1, "medicationCodeableConcept": {"text": "Paracetamol 500 mg"},
              "authoredOn": "2024-03-01", "requester": {"reference": f"Practitioner/{doctor}"},
              "dosageInstruction": [{"text": "One tablet three times a day"}]})
    h.create({"resourceType": "DiagnosticReport", "status": "final", "subject": subject, "encounter": ref1,
              "code": {"text": "CBC"}, "effectiveDateTime": "2024-03-01T11:00:00+05:30"})
    h.create({"resourceType": "Immunization", "status": "completed", "patient": subject, "encounter": ref1,
              "vaccineCode": {"coding": [{"system": "http://snomed.info/sct", "code": "1119305005",
                                          "display": "COVID-19 antigen vaccine"}]},
              "occurrenceDateTime": "2024-03-01T10:30:00+05:30", "lotNumber": "B-1234"})
    h.create({"resourceType": "Condition", "subject": subject, "encounter": ref2, "code": {"text": "Old cough"},
              "recordedDate": "2022-06-01"})
    cholesterol = h.create({"resourceType": "Observation", "status": "final", "subject": subject,
                            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                "observation-category", "code": "laboratory"}]}],
                            "code": {"coding": [{"system": "http://loinc.org", "code": "2093-3",
                                                 "display": "Cholesterol [Mass/volume] in Serum or Plasma"}]},
                            "effectiveDateTime": "2024-04-01T09:00:00+05:30",
                            "valueQuantity": {"value": 156, "unit": "mg/dL"}})
    dr = h.create({"resourceType": "DiagnosticReport", "status": "final", "subject": subject,
                   "code": {"coding": [{"system": "http://loinc.org", "code": "24331-1",
                                        "display": "Lipid panel - Serum or Plasma"}], "text": "Lipid profile"},
                   "effectiveDateTime": "2024-04-01T09:00:00+05:30",
                   "resultsInterpreter": [{"reference": f"Practitioner/{doctor}"}],
                   "result": [{"reference": f"Observation/{cholesterol}"}], "conclusion": "Normal lipid profile"})
    return {"address": address, "patient": pid, "e1": f"Encounter/{e1}", "e2": f"Encounter/{e2}",
            "dr": f"DiagnosticReport/{dr}", "name": f"Hina {handle}", "handle": handle}


def _grant(sim: Simulator, data: dict[str, Any], hi_types: list[str], **extra: Any) -> str:
    spec = {"patientReference": f"Patient/{data['patient']}", "careContexts": [data["e1"], data["e2"], data["dr"]],
            "hiTypes": hi_types, "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
            "dataEraseAt": (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "abhaAddress": f"{data['handle']}@sbx", "hipId": HIP_ID, **extra}
    result = sim.post("/sim/consent/grant", spec)
    assert result["status"] == 202
    ack = sim.answer("/consent/v3/request/hip/on-notify", result["requestId"])
    assert ack["body"]["acknowledgement"] == {"status": "OK", "consentId": result["consentId"]}
    assert ack["headers"]["x-hip-id"] == HIP_ID
    return str(result["consentId"])


def _request(sim: Simulator, consent: str, **extra: Any) -> dict[str, Any]:
    result = sim.post("/sim/hiu/request", {"consentId": consent, "from": "2024-01-01T00:00:00.000Z",
                                           "to": "2024-12-31T00:00:00.000Z", "hipId": HIP_ID, **extra})
    assert result["status"] == 202
    return result


def _transfer_notice(sim: Simulator, txn: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        found[:] = [e for e in sim.log(NOTIFY) if e["body"]["notification"]["transactionId"] == txn]
        return bool(found)

    try:
        wait_until(arrived, 30, "the transfer notification")
    except AssertionError:
        raise AssertionError(f"no transfer notification; outbox: {_outbox_errors(sim)}") from None
    return found[0]["body"]["notification"]


HOSPITALS: list[Hospital] = []


def _outbox_errors(sim: Simulator) -> list[str]:
    from fhir_server.jobs import outbox_admin

    return [str(r["lastError"]) for h in HOSPITALS for r in outbox_admin.list_rows(h.fhir.engine, None, 20)["rows"]
            if r["lastError"]]


def test_a_patient_links_their_visits_to_their_abha(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    address = f"{data['handle']}@sbx"
    found = sim.post("/sim/call", {"path": DISCOVER, "hipId": HIP_ID, "body": {
        "transactionId": str(uuid.uuid4()), "patient": {
            "id": address, "name": data["name"], "gender": "F", "yearOfBirth": 1979,
            "verifiedIdentifiers": [{"type": "MOBILE", "value": "9800083232"}], "unverifiedIdentifiers": []}}})
    assert found["status"] == 202
    on_discover = sim.answer("/user-initiated-linking/v3/patient/care-context/on-discover", found["requestId"])
    groups = on_discover["body"]["patient"]
    assert on_discover["body"]["matchedBy"] == ["MOBILE"]
    assert on_discover["headers"]["request-id"] and on_discover["headers"]["timestamp"].endswith("Z")
    contexts = {cc["referenceNumber"]: g["hiType"] for g in groups for cc in g["careContexts"]}
    assert contexts == {data["e1"]: "OPConsultation", data["e2"]: "OPConsultation", data["dr"]: "DiagnosticReport"}
    assert {g["referenceNumber"] for g in groups} == {f"Patient/{data['patient']}"}

    init = sim.post("/sim/call", {"path": LINK_INIT, "hipId": HIP_ID, "body": {
        "transactionId": str(uuid.uuid4()), "abhaAddress": address,
        "patient": [{"referenceNumber": f"Patient/{data['patient']}", "careContexts": [
            {"referenceNumber": data["e1"]}, {"referenceNumber": data["dr"]}], "hiType": "OPConsultation",
            "count": 2}]}})
    on_init = sim.answer("/user-initiated-linking/v3/link/care-context/on-init", init["requestId"])
    link_ref = on_init["body"]["link"]["referenceNumber"]
    assert on_init["body"]["link"]["meta"]["communicationMedium"] == "MOBILE"
    sms: list[dict[str, Any]] = []

    def otp_sent() -> bool:
        sms[:] = [m for m in sim.http.get("/sim/sms").json() if address in m["message"]]
        return bool(sms)

    wait_until(otp_sent, 20, "the OTP message")
    assert sms[0]["to"] == "+919800083232"
    otp = sms[0]["message"].split()[0]

    wrong = sim.post("/sim/call", {"path": LINK_CONFIRM, "hipId": HIP_ID, "body": {
        "confirmation": {"linkRefNumber": link_ref, "token": "000000" if otp != "000000" else "111111"}}})
    assert sim.answer("/user-initiated-linking/v3/link/care-context/on-confirm",
                      wrong["requestId"])["body"]["error"]["code"] == "ABDM-1017"
    right = sim.post("/sim/call", {"path": LINK_CONFIRM, "hipId": HIP_ID, "body": {
        "confirmation": {"linkRefNumber": link_ref, "token": otp}}})
    linked = sim.answer("/user-initiated-linking/v3/link/care-context/on-confirm", right["requestId"])["body"]
    assert {cc["referenceNumber"] for g in linked["patient"] for cc in g["careContexts"]} == {data["e1"], data["dr"]}
    patient = hospital.read(f"Patient/{data['patient']}")
    assert {"system": ABHA_ADDRESS_SYSTEM, "value": address} in [
        {k: i[k] for k in ("system", "value")} for i in patient["identifier"]]


def test_a_consented_request_receives_exactly_the_consented_records(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    consent = _grant(sim, data, ["OPConsultation", "Prescription"])
    stored = hospital.read("Consent", [("identifier", f"https://abdm.gov.in/consent-artefact|{consent}")])
    assert stored["entry"][0]["resource"]["status"] == "active"
    pull = _request(sim, consent)
    ack = sim.answer("/data-flow/v3/health-information/hip/on-request", pull["requestId"])
    assert ack["body"]["hiRequest"] == {"transactionId": pull["transactionId"], "sessionStatus": "ACKNOWLEDGED"}
    notice = _transfer_notice(sim, pull["transactionId"])
    statuses = {s["careContextReference"]: s["hiStatus"] for s in notice["statusNotification"]["statusResponses"]}
    assert notice["statusNotification"]["sessionStatus"] == "TRANSFERRED"
    # E2 is from 2022 (outside the dates); the lab reports are not a consented HI type
    assert statuses == {data["e1"]: "DELIVERED", data["e2"]: "ERRORED", data["dr"]: "ERRORED"}
    received = sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()
    assert received["errors"] == []
    docs = received["documents"]
    assert {d["careContextReference"] for d in docs} == {data["e1"]}
    profiles = sorted(d["bundle"]["entry"][0]["resource"]["meta"]["profile"][0].rsplit("/", 1)[1] for d in docs)
    assert profiles == ["OPConsultRecord", "PrescriptionRecord"]
    for doc in docs:
        bundle = doc["bundle"]
        assert bundle["type"] == "document" and bundle["identifier"]["value"]
        types = {e["resource"]["resourceType"] for e in bundle["entry"]}
        assert "DiagnosticReport" not in types
        texts = str(bundle)
        assert "Old cough" not in texts and "CBC" not in texts  # other visit, other HI type
        outcome = hospital.fhir.handle(FhirRequest("POST", "Bundle/$validate", resource=bundle,
                                                   headers={"content-type": "application/fhir+json"},
                                                   access=as_system("test")))
        errors = [i for i in outcome.resource["issue"] if i["severity"] in ("error", "fatal")]  # type: ignore[index]
        assert errors == []
    op = next(d["bundle"] for d in docs if "OPConsult" in str(d["bundle"]["entry"][0]["resource"]["meta"]))
    assert {"Condition", "Observation", "Encounter", "Patient"} <= {e["resource"]["resourceType"] for e in op["entry"]}
    # every exchange left an AuditEvent naming the Consent
    consent_ref = f"Consent/{stored['entry'][0]['resource']['id']}"
    events = hospital.read("AuditEvent", [("entity", consent_ref), ("_count", "50")])
    codes = {e["resource"]["subtype"][0]["code"] for e in events.get("entry", [])}
    assert {"abdm-consent-notify", "abdm-hi-request", "abdm-hi-transfer"} <= codes


def test_diagnostic_reports_travel_as_valid_records_and_invalid_ones_stay(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    consent = _grant(sim, data, ["DiagnosticReport"])
    pull = _request(sim, consent)
    notice = _transfer_notice(sim, pull["transactionId"])
    statuses = {s["careContextReference"]: (s["hiStatus"], s["description"])
                for s in notice["statusNotification"]["statusResponses"]}
    assert statuses[data["dr"]] == ("DELIVERED", "Delivered")
    # the visit's CBC has no LOINC code, interpreter, result or conclusion: the IG rejects it, it is not sent
    assert statuses[data["e1"]] == ("ERRORED", "Failed NRCeS validation")
    docs = sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["documents"]
    assert [d["careContextReference"] for d in docs] == [data["dr"]]
    bundle = docs[0]["bundle"]
    composition = bundle["entry"][0]["resource"]
    assert composition["meta"]["profile"] == ["https://nrces.in/ndhm/fhir/r4/StructureDefinition/DiagnosticReportRecord"]
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"DiagnosticReport", "Observation",
                                                                          "Practitioner", "Patient"}
    assert "Fever" not in str(bundle)  # nothing of the OP visit


def test_immunizations_travel_as_immunization_records(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    pull = _request(sim, _grant(sim, data, ["ImmunizationRecord"]))
    notice = _transfer_notice(sim, pull["transactionId"])
    assert {s["careContextReference"]: s["hiStatus"] for s in notice["statusNotification"]["statusResponses"]} == {
        data["e1"]: "DELIVERED", data["e2"]: "ERRORED", data["dr"]: "ERRORED"}
    docs = sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["documents"]
    bundle = docs[0]["bundle"]
    assert bundle["entry"][0]["resource"]["meta"]["profile"][0].endswith("/ImmunizationRecord")
    assert [e["resource"]["lotNumber"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Immunization"] \
        == ["B-1234"]
    assert "Fever" not in str(bundle) and "Paracetamol" not in str(bundle)


def test_a_revoked_consent_gets_nothing(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    consent = _grant(sim, data, ["OPConsultation"])
    revoked = sim.post("/sim/consent/revoke", {"consentId": consent, "hipId": HIP_ID})
    sim.answer("/consent/v3/request/hip/on-notify", revoked["requestId"])
    pull = _request(sim, consent)
    ack = sim.answer("/data-flow/v3/health-information/hip/on-request", pull["requestId"])
    assert ack["body"]["error"]["code"] == "ABDM-1011"
    assert sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["pages"] == []


def test_requests_outside_the_consent_are_refused(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    consent = _grant(sim, data, ["OPConsultation"])
    wider = _request(sim, consent, **{"from": "2020-01-01T00:00:00.000Z"})
    ack = sim.answer("/data-flow/v3/health-information/hip/on-request", wider["requestId"])
    assert ack["body"]["error"]["code"] == "ABDM-1013"
    unknown = _request(sim, str(uuid.uuid4()))
    assert sim.answer("/data-flow/v3/health-information/hip/on-request",
                      unknown["requestId"])["body"]["error"]["code"] == "ABDM-1009"
    expired = _grant(sim, data, ["OPConsultation"])
    gone = sim.post("/sim/consent/expire", {"consentId": expired, "hipId": HIP_ID})
    sim.answer("/consent/v3/request/hip/on-notify", gone["requestId"])
    late = _request(sim, expired)
    assert sim.answer("/data-flow/v3/health-information/hip/on-request", late["requestId"])["body"]["error"]
    for pull in (wider, unknown, late):
        assert sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["pages"] == []


def test_malformed_or_wrong_keys_are_refused(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    consent = _grant(sim, data, ["OPConsultation"])
    for key in ("bm90IGEga2V5", "BA" + "A" * 86):
        pull = _request(sim, consent, keyValue=key)
        ack = sim.answer("/data-flow/v3/health-information/hip/on-request", pull["requestId"])
        assert ack["body"]["error"]["code"] == "ABDM-1019"
        assert sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["pages"] == []
    x509 = _request(sim, consent, x509=True)  # BouncyCastle's X.509 form is accepted
    _transfer_notice(sim, x509["transactionId"])
    assert sim.http.get("/sim/hiu/received", params={"transactionId": x509["transactionId"]}).json()["documents"]


def test_duplicate_gateway_calls_are_idempotent(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    request_id = str(uuid.uuid4())
    consent = _grant(sim, data, ["Prescription"], requestId=request_id)
    _grant(sim, data, ["Prescription"], requestId=request_id, consentId=consent)  # the same notification again
    history = hospital.read(f"Consent/{hospital.read('Consent', [('identifier', f'https://abdm.gov.in/consent-artefact|{consent}')])['entry'][0]['resource']['id']}/_history")
    assert history["total"] == 1
    txn_request = str(uuid.uuid4())
    first = _request(sim, consent, requestId=txn_request)
    _transfer_notice(sim, first["transactionId"])
    again = sim.post("/sim/call", {"path": "/api/v3/hip/health-information/request", "hipId": HIP_ID, "body": {
        "transactionId": first["transactionId"], "hiRequest": {
            "consent": {"id": consent}, "dateRange": {"from": "2024-01-01T00:00:00.000Z",
                                                      "to": "2024-12-31T00:00:00.000Z"},
            "dataPushUrl": sim.url + "/sim/hiu/push",
            "keyMaterial": {"cryptoAlg": "ECDH", "curve": "Curve25519", "dhPublicKey": {
                "expiry": "2030-01-01T00:00:00.000Z", "parameters": "Curve25519/32byte random key",
                "keyValue": "BAheD5rUqTy4V5xR4/6HWmYpopu5CO+KO8BECS0udNqUTSNo91TIqIIy1A4Vh+F94c+n9vAcwXU2bGcfsI5f69Y="},
                "nonce": "6uj1RdDUbcpI3lVMZvijkMC8Te20O4Bcyz0SyivX8Eg="}}}})
    assert sim.answer("/data-flow/v3/health-information/hip/on-request",
                      again["requestId"])["body"]["hiRequest"]["sessionStatus"] == "ACKNOWLEDGED"
    wait_until(lambda: len(hospital.read("Task", [("identifier", f"{hip_module.TASK_SYSTEM}/hi-request|"
                                                                 f"{first['transactionId']}")])["entry"]) == 1, 10)
    notices = [e for e in sim.log(NOTIFY) if e["body"]["notification"]["transactionId"] == first["transactionId"]]
    assert len(notices) == 1  # pushed and notified once
    assert len(sim.http.get("/sim/hiu/received", params={"transactionId": first["transactionId"]}).json()["pages"]) == 1


def test_gateway_token_is_required(hospital: Hospital, sim: Simulator) -> None:
    bad = sim.post("/sim/call", {"path": DISCOVER, "token": "not-a-jwt", "body": {"transactionId": "x", "patient": {}}})
    assert bad["status"] == 401
    missing = hospital.http.post("/abdm" + DISCOVER, json={"transactionId": "x", "patient": {}},
                                 headers={"REQUEST-ID": str(uuid.uuid4())})
    assert missing.status_code == 401


def test_callbacks_survive_the_gateway_being_down(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital)
    sim.post("/sim/fail", {"gateway": "down"})
    try:
        result = sim.post("/sim/consent/grant", {
            "patientReference": f"Patient/{data['patient']}", "careContexts": [data["e1"]], "hiTypes": ["Prescription"],
            "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
            "dataEraseAt": "2030-01-01T00:00:00.000Z", "hipId": HIP_ID})
        assert result["status"] == 202  # we answer at once; the callback waits in the outbox
        wait_until(lambda: _attempted(hospital), 20, "a failed delivery")
    finally:
        sim.post("/sim/fail", {"gateway": "up"})
    sim.answer("/consent/v3/request/hip/on-notify", result["requestId"], timeout=30)


def _attempted(h: Hospital) -> bool:
    from fhir_server.jobs import outbox_admin

    return any(r["attempts"] >= 1 and r["status"] == "pending" for r in outbox_admin.list_rows(h.fhir.engine, None, 50)
               ["rows"])


def test_our_hiu_pulls_another_facilitys_records(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital, address=f"pull{uuid.uuid4().hex[:8]}@sbx")
    erase_at = (datetime.now(UTC) + timedelta(seconds=25)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    resp = hospital.http.post("/abdm/hiu/consent-requests", json={
        "patient": f"Patient/{data['patient']}", "hiTypes": ["OPConsultation", "Prescription"],
        "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z", "dataEraseAt": erase_at})
    assert resp.status_code == 202, resp.text
    request_consent = resp.json()["consent"]
    gateway_ids: list[str] = []

    def registered() -> bool:
        consent = hospital.read(request_consent)
        gateway_ids[:] = [i["value"] for i in consent["identifier"] if i["system"] == "https://abdm.gov.in/consent-request"]
        return bool(gateway_ids)

    try:
        wait_until(registered, 20, "the consent request's on-init")
    except AssertionError:
        raise AssertionError(f"no on-init: {sim.http.get('/sim/state').json()['outgoing']}") from None
    init = [e for e in sim.log("/consent/v3/request/init") if e["body"]["consent"]["patient"]["id"] == data["address"]]
    assert init[0]["headers"]["x-hiu-id"]
    assert init[0]["body"]["consent"]["hiTypes"] == ["OPConsultation", "Prescription"]
    sim.post("/sim/cm/grant", {"consentRequestId": gateway_ids[0]})

    def stored() -> list[dict[str, Any]]:
        found = hospital.read("Provenance", [("entity:missing", "false"), ("_count", "100")])
        return [e["resource"] for e in found.get("entry", [])
                if any(x["what"]["reference"].startswith("Consent/abdm-hiu-") for x in e["resource"]["entity"])
                and e["resource"]["policy"][0].rsplit("/", 1)[1] in sim.http.get("/sim/state").json()["artefacts"]]

    wait_until(lambda: len(stored()) >= 2, 30, "the pulled documents")
    provenance = stored()
    assert {p["agent"][0]["who"]["identifier"]["value"] for p in provenance} == {"SIM-HIP"}
    bundles = [hospital.read(p["target"][0]["reference"]) for p in provenance]
    assert sorted(b["identifier"]["value"] for b in bundles) == ["sim-op", "sim-rx"]
    consent_ref = provenance[0]["entity"][0]["what"]["reference"]
    artefact = hospital.read(consent_ref)
    artefact_id = artefact["identifier"][0]["value"]
    ours: list[dict[str, Any]] = []

    def notified() -> bool:  # our HIU's transfer notification, once both pages have come
        ours[:] = [e["body"]["notification"] for e in sim.log(NOTIFY)
                   if e["body"]["notification"]["notifier"]["type"] == "HIU"
                   and e["body"]["notification"]["consentId"] == artefact_id]
        return bool(ours)

    wait_until(notified, 20, "our HIU's transfer notification")
    assert {s["careContextReference"]: s["hiStatus"] for s in ours[0]["statusNotification"]["statusResponses"]} \
        == {"SIM-CC-1": "OK", "SIM-CC-2": "OK"}
    assert artefact["status"] == "active" and artefact["sourceReference"]["reference"] == request_consent
    # a re-pull replaces, never duplicates
    again = hospital.http.post(f"/abdm/hiu/consents/{consent_ref.split('/')[1]}/pull")
    assert again.status_code == 202
    wait_until(lambda: sum(1 for p in sim.http.get("/sim/state").json()["pushes"] if p["status"] == 202) >= 4, 30,
               "the second pull")
    assert len(stored()) == 2
    # erased at dataEraseAt
    wait_until(lambda: not stored(), 60, "erasure at dataEraseAt")
    assert hospital.read(consent_ref)["status"] == "inactive"
    for bundle in bundles:
        gone = hospital.fhir.handle(FhirRequest("GET", f"Bundle/{bundle['id']}", access=as_system("test")))
        assert gone.status == 410


def test_tampered_pushes_are_refused(hospital: Hospital, sim: Simulator) -> None:
    data = _visit_data(hospital, address=f"tamp{uuid.uuid4().hex[:8]}@sbx")
    sim.post("/sim/config", {"tamperNext": True})
    resp = hospital.http.post("/abdm/hiu/consent-requests", json={
        "patient": f"Patient/{data['patient']}", "hiTypes": ["OPConsultation"],
        "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
        "dataEraseAt": "2030-01-01T00:00:00.000Z"})
    consent = resp.json()["consent"]
    ids: list[str] = []
    wait_until(lambda: bool(ids.extend(i["value"] for i in hospital.read(consent)["identifier"]
                                       if i["system"] == "https://abdm.gov.in/consent-request") or ids), 20)
    before = len(sim.http.get("/sim/state").json()["pushes"])
    sim.post("/sim/cm/grant", {"consentRequestId": ids[0]})
    wait_until(lambda: len(sim.http.get("/sim/state").json()["pushes"]) > before, 30, "the tampered push")
    assert sim.http.get("/sim/state").json()["pushes"][before]["status"] == 400


def test_abha_identifiers_are_validated(hospital: Hospital) -> None:
    bad = hospital.fhir.handle(FhirRequest("POST", "Patient", resource={
        "resourceType": "Patient", "identifier": [{"system": ABHA_NUMBER_SYSTEM, "value": "12-34"}]},
        headers={"content-type": "application/fhir+json"}, access=as_system("test")))
    assert bad.status == 400 and "Patient.identifier[0].value" in str(bad.resource)
    bad = hospital.fhir.handle(FhirRequest("POST", "Patient", resource={
        "resourceType": "Patient", "identifier": [{"system": ABHA_ADDRESS_SYSTEM, "value": "ab@gmail"}]},
        headers={"content-type": "application/fhir+json"}, access=as_system("test")))
    assert bad.status == 400


def test_gateway_session_is_refreshed_before_it_expires(sim: Simulator) -> None:
    from interfaces.abdm.gateway import Gateway
    from interfaces.abdm.settings import AbdmSettings

    sim.post("/sim/config", {"tokenSeconds": 4})  # renewed a quarter of its life (1 s) before expiry
    try:
        gateway = Gateway(AbdmSettings(gateway_url=sim.url, client_id="hospital", client_secret="secret",
                                       hip_id="H"))
        first = gateway.token()
        assert gateway.token() == first  # reused while fresh
        headers = gateway.headers(extra={"X-HIP-ID": "H"})
        assert headers["X-CM-ID"] == "sbx" and headers["Authorization"] == f"Bearer {first}"
        assert uuid.UUID(headers["REQUEST-ID"]) and headers["TIMESTAMP"].endswith("Z")
        wait_until(lambda: gateway.token() != first, 10, "a renewed session")
        assert gateway.sessions_opened == 2
        gateway.post("/consent/v3/request/hip/on-notify", {"acknowledgement": {"status": "OK", "consentId": "x"}})
    finally:
        sim.post("/sim/config", {"tokenSeconds": 1200})


def test_a_new_visit_is_linked_to_the_patients_abha_by_the_hip(hospital: Hospital, sim: Simulator) -> None:
    address = f"visit{uuid.uuid4().hex[:8]}@sbx"
    data = _visit_data(hospital, address=address)  # its Encounters are created after the ABHA address is known
    links: list[dict[str, Any]] = []

    def linked() -> bool:
        links[:] = [e for e in sim.log("/hip/v3/link/carecontext") if e["body"]["abhaAddress"] == address]
        return len(links) == 2

    wait_until(linked, 30, "both visits linked")
    tokens = [e for e in sim.log("/v3/token/generate-token") if e["body"]["abhaAddress"] == address]
    assert tokens[0]["body"]["abhaNumber"].isdigit() and len(tokens[0]["body"]["abhaNumber"]) == 14
    assert tokens[0]["headers"]["x-hip-id"] == HIP_ID
    assert all(e["headers"]["x-link-token"].startswith("sim-link-token-") for e in links)
    contexts = {cc["referenceNumber"] for e in links for g in e["body"]["patient"] for cc in g["careContexts"]}
    assert contexts == {data["e1"], data["e2"]}

"""ABDM, our hospital as HIP, over real HTTP: the simulator (gateway, consent manager, a remote HIU) in its own
process drives our endpoints; what it received and decrypted is inspected here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.rest.request import FhirRequest
from fhir_server.storage.access import as_system
from interfaces.abdm import hip as hip_module
from interfaces.abdm.hip_linking import CONTEXT_NOTIFY, SMS_NOTIFY
from interfaces.abdm.identity import ABHA_ADDRESS_SYSTEM, ABHA_NUMBER_SYSTEM
from interfaces.abdm.records import DateRange, DocumentBuilder
from tests.conftest import wait_until
from tests.integration.abdm_support import (
    DISCOVER,
    HIP_ID,
    LINK_CONFIRM,
    LINK_INIT,
    NOTIFY,
    Hospital,
    Simulator,
    grant,
    hospital_on,
    request_data,
    start_simulator,
    transfer_notice,
    visit_data,
)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    yield from start_simulator()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(request: pytest.FixtureRequest, sim: Simulator, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Hospital]:
    yield from hospital_on(request.param, sim, tmp_path_factory)



def test_a_patient_links_their_visits_to_their_abha(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
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


def test_without_the_front_desk_discovery_wants_the_exact_name(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)  # this hospital runs no workflows: no master patient index
    number = next(i["value"] for i in hospital.read(f"Patient/{data['patient']}")["identifier"]
                  if i["system"] == ABHA_NUMBER_SYSTEM).replace("-", "")
    answers = []
    for name in (data["name"].replace("Hina", "Heena"), data["name"].upper()):
        call = sim.post("/sim/call", {"path": DISCOVER, "hipId": HIP_ID, "body": {
            "transactionId": str(uuid.uuid4()), "patient": {
                "name": name, "gender": "F", "yearOfBirth": 1979,
                "verifiedIdentifiers": [{"type": "ABHA_NUMBER", "value": number}]}}})
        answers.append(sim.answer("/user-initiated-linking/v3/patient/care-context/on-discover",
                                  call["requestId"])["body"])
    assert answers[0]["error"]["code"] == "ABDM-1010"  # a spelling variant is another name here
    assert answers[1]["patient"][0]["referenceNumber"] == f"Patient/{data['patient']}"  # case aside, the same


def test_a_consented_request_receives_exactly_the_consented_records(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    consent = grant(sim, data, ["OPConsultation", "Prescription"])
    stored = hospital.read("Consent", [("identifier", f"https://abdm.gov.in/consent-artefact|{consent}")])
    assert stored["entry"][0]["resource"]["status"] == "active"
    pull = request_data(sim, consent)
    ack = sim.answer("/data-flow/v3/health-information/hip/on-request", pull["requestId"])
    assert ack["body"]["hiRequest"] == {"transactionId": pull["transactionId"], "sessionStatus": "ACKNOWLEDGED"}
    notice = transfer_notice(sim, pull["transactionId"])
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
    data = visit_data(hospital)
    consent = grant(sim, data, ["DiagnosticReport"])
    pull = request_data(sim, consent)
    notice = transfer_notice(sim, pull["transactionId"])
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
    data = visit_data(hospital)
    pull = request_data(sim, grant(sim, data, ["ImmunizationRecord"]))
    notice = transfer_notice(sim, pull["transactionId"])
    assert {s["careContextReference"]: s["hiStatus"] for s in notice["statusNotification"]["statusResponses"]} == {
        data["e1"]: "DELIVERED", data["e2"]: "ERRORED", data["dr"]: "ERRORED"}
    docs = sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["documents"]
    bundle = docs[0]["bundle"]
    assert bundle["entry"][0]["resource"]["meta"]["profile"][0].endswith("/ImmunizationRecord")
    assert [e["resource"]["lotNumber"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Immunization"] \
        == ["B-1234"]
    assert "Fever" not in str(bundle) and "Paracetamol" not in str(bundle)


def test_a_revoked_consent_gets_nothing(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    consent = grant(sim, data, ["OPConsultation"])
    revoked = sim.post("/sim/consent/revoke", {"consentId": consent, "hipId": HIP_ID})
    sim.answer("/consent/v3/request/hip/on-notify", revoked["requestId"])
    pull = request_data(sim, consent)
    ack = sim.answer("/data-flow/v3/health-information/hip/on-request", pull["requestId"])
    assert ack["body"]["error"]["code"] == "ABDM-1011"
    assert sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["pages"] == []


def test_requests_outside_the_consent_are_refused(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    consent = grant(sim, data, ["OPConsultation"])
    wider = request_data(sim, consent, **{"from": "2020-01-01T00:00:00.000Z"})
    ack = sim.answer("/data-flow/v3/health-information/hip/on-request", wider["requestId"])
    assert ack["body"]["error"]["code"] == "ABDM-1013"
    unknown = request_data(sim, str(uuid.uuid4()))
    assert sim.answer("/data-flow/v3/health-information/hip/on-request",
                      unknown["requestId"])["body"]["error"]["code"] == "ABDM-1009"
    expired = grant(sim, data, ["OPConsultation"])
    gone = sim.post("/sim/consent/expire", {"consentId": expired, "hipId": HIP_ID})
    sim.answer("/consent/v3/request/hip/on-notify", gone["requestId"])
    late = request_data(sim, expired)
    assert sim.answer("/data-flow/v3/health-information/hip/on-request", late["requestId"])["body"]["error"]
    for pull in (wider, unknown, late):
        assert sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["pages"] == []


def test_malformed_or_wrong_keys_are_refused(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    consent = grant(sim, data, ["OPConsultation"])
    for key in ("bm90IGEga2V5", "BA" + "A" * 86):
        pull = request_data(sim, consent, keyValue=key)
        ack = sim.answer("/data-flow/v3/health-information/hip/on-request", pull["requestId"])
        assert ack["body"]["error"]["code"] == "ABDM-1019"
        assert sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["pages"] == []
    x509 = request_data(sim, consent, x509=True)  # BouncyCastle's X.509 form is accepted
    transfer_notice(sim, x509["transactionId"])
    assert sim.http.get("/sim/hiu/received", params={"transactionId": x509["transactionId"]}).json()["documents"]


def test_duplicate_gateway_calls_are_idempotent(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    request_id = str(uuid.uuid4())
    consent = grant(sim, data, ["Prescription"], requestId=request_id)
    grant(sim, data, ["Prescription"], requestId=request_id, consentId=consent)  # the same notification again
    history = hospital.read(f"Consent/{hospital.read('Consent', [('identifier', f'https://abdm.gov.in/consent-artefact|{consent}')])['entry'][0]['resource']['id']}/_history")
    assert history["total"] == 1
    txn_request = str(uuid.uuid4())
    first = request_data(sim, consent, requestId=txn_request)
    transfer_notice(sim, first["transactionId"])
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
    data = visit_data(hospital)
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


def test_abha_identifiers_are_validated(hospital: Hospital) -> None:
    bad = hospital.fhir.handle(FhirRequest("POST", "Patient", resource={
        "resourceType": "Patient", "identifier": [{"system": ABHA_NUMBER_SYSTEM, "value": "12-34"}]},
        headers={"content-type": "application/fhir+json"}, access=as_system("test")))
    assert bad.status == 400 and "Patient.identifier[0].value" in str(bad.resource)
    bad = hospital.fhir.handle(FhirRequest("POST", "Patient", resource={
        "resourceType": "Patient", "identifier": [{"system": ABHA_ADDRESS_SYSTEM, "value": "ab@gmail"}]},
        headers={"content-type": "application/fhir+json"}, access=as_system("test")))
    assert bad.status == 400


def test_a_new_visit_is_linked_to_the_patients_abha_by_the_hip(hospital: Hospital, sim: Simulator) -> None:
    address = f"visit{uuid.uuid4().hex[:8]}@sbx"
    data = visit_data(hospital, address=address)  # its care contexts are created after the ABHA address is known
    links: list[dict[str, Any]] = []

    def linked() -> bool:
        links[:] = [e for e in sim.log("/hip/v3/link/carecontext") if e["body"]["abhaAddress"] == address]
        return len(links) == 3

    wait_until(linked, 30, "both visits and the standalone report linked")
    tokens = [e for e in sim.log("/v3/token/generate-token") if e["body"]["abhaAddress"] == address]
    assert tokens[0]["body"]["abhaNumber"].isdigit() and len(tokens[0]["body"]["abhaNumber"]) == 14
    assert tokens[0]["headers"]["x-hip-id"] == HIP_ID
    assert all(e["headers"]["x-link-token"].startswith("sim-link-token-") for e in links)
    contexts = {cc["referenceNumber"] for e in links for g in e["body"]["patient"] for cc in g["careContexts"]}
    assert contexts == {data["e1"], data["e2"], data["dr"]}
    # once the gateway confirmed each link, the patient's app is told of the new record (context notify)
    notices: list[dict[str, Any]] = []

    def notified() -> bool:
        notices[:] = [e for e in sim.log(CONTEXT_NOTIFY) if e["body"]["notification"]["patient"]["id"] == address]
        return len(notices) == 3

    wait_until(notified, 30, "the new-record notifications")
    by_context = {n["body"]["notification"]["careContext"]["careContextReference"]: n for n in notices}
    assert set(by_context) == {data["e1"], data["e2"], data["dr"]}
    first = by_context[data["e1"]]
    assert first["headers"]["x-hip-id"] == HIP_ID
    assert first["body"]["notification"]["hiTypes"] == ["OPConsultation"]
    assert first["body"]["notification"]["careContext"]["patientReference"] == f"Patient/{data['patient']}"
    assert first["body"]["notification"]["hip"]["id"] == HIP_ID
    assert by_context[data["dr"]]["body"]["notification"]["hiTypes"] == ["DiagnosticReport"]
    links_done: list[dict[str, Any]] = []

    def all_completed() -> bool:
        found = hospital.read("Task", [("patient", f"Patient/{data['patient']}"), ("_count", "50")])
        links_done[:] = [e["resource"] for e in found.get("entry", [])
                         if e["resource"]["identifier"][0]["system"] == "urn:fhir-server:abdm-task/hip-link"]
        return len(links_done) == 3 and all(t["status"] == "completed" for t in links_done)

    wait_until(all_completed, 20, "the link Tasks completed")


def test_a_patient_without_abha_gets_the_sms_deep_link(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)  # no ABHA address: nothing to link, the gateway texts the deep link instead
    sent: list[dict[str, Any]] = []

    def texted() -> bool:
        sent[:] = [e for e in sim.log(SMS_NOTIFY) if e["headers"]["request-id"] in _sms_requests(hospital, data)]
        return len(sent) == 3  # E1, E2 and the standalone report

    wait_until(texted, 30, "the SMS deep links")
    assert {e["body"]["notification"]["phoneNo"] for e in sent} == {"+919800083232"}
    assert {e["body"]["notification"]["hip"]["id"] for e in sent} == {HIP_ID}
    assert not [e for e in sim.log("/v3/token/generate-token") if e["body"]["name"] == data["name"]]
    ack = sim.post("/sim/call", {"path": "/api/v3/patients/sms/on-notify", "hipId": HIP_ID, "body": {
        "acknowledgement": {"status": "SUCCESS"}, "response": {"requestId": sent[0]["headers"]["request-id"]}}})
    assert ack["status"] == 202  # the gateway's acknowledgement is taken


def _sms_requests(h: Hospital, data: dict[str, Any]) -> set[str]:
    """Our REQUEST-IDs of the deep links for this patient's care contexts (derived from their outbox keys)."""
    keys = [f"callback:{SMS_NOTIFY}:sms:{ref}" for ref in (data["e1"], data["e2"], data["dr"])]
    return {str(uuid.uuid5(uuid.NAMESPACE_URL, k)) for k in keys}


def test_a_gateway_token_for_another_audience_is_refused(hospital: Hospital, sim: Simulator) -> None:
    body = {"transactionId": str(uuid.uuid4()), "patient": {"name": "Nobody", "gender": "F", "yearOfBirth": 1990}}
    wrong = sim.post("/sim/call", {"path": DISCOVER, "hipId": HIP_ID, "audience": "some-other-service", "body": body})
    assert wrong["status"] == 401 and "aud" in wrong["body"]
    right = sim.post("/sim/call", {"path": DISCOVER, "hipId": HIP_ID, "audience": "account", "body": body})
    assert right["status"] == 202


def test_a_consent_without_the_managers_signature_is_not_honoured(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    sim.post("/sim/config", {"badSignatures": True})
    try:
        result = sim.post("/sim/consent/grant", {
            "patientReference": f"Patient/{data['patient']}", "careContexts": [data["e1"]], "hiTypes": ["Prescription"],
            "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
            "dataEraseAt": "2030-01-01T00:00:00.000Z", "hipId": HIP_ID})
    finally:
        sim.post("/sim/config", {"badSignatures": False})
    ack = sim.answer("/consent/v3/request/hip/on-notify", result["requestId"])["body"]
    assert ack["error"]["code"] == "ABDM-1030" and ack["acknowledgement"]["status"] == "UNKNOWN"
    stored = hospital.read("Consent", [("identifier", f"https://abdm.gov.in/consent-artefact|{result['consentId']}")])
    assert stored.get("entry", []) == []
    pull = request_data(sim, result["consentId"])
    assert sim.answer("/data-flow/v3/health-information/hip/on-request",
                      pull["requestId"])["body"]["error"]["code"] == "ABDM-1009"


def test_the_consents_frequency_limits_the_pulls(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    consent = grant(sim, data, ["Prescription"], frequency={"unit": "HOUR", "value": 1, "repeats": 1})
    first, second, third = (request_data(sim, consent) for _ in range(3))
    for pull in (first, second):  # repeats 1: the request and one repeat within the hour
        ack = sim.answer("/data-flow/v3/health-information/hip/on-request", pull["requestId"])
        assert ack["body"]["hiRequest"]["sessionStatus"] == "ACKNOWLEDGED"
    refused = sim.answer("/data-flow/v3/health-information/hip/on-request", third["requestId"])["body"]
    assert refused["error"]["code"] == "ABDM-1014" and refused["hiRequest"]["sessionStatus"] == "FAILED"
    transfer_notice(sim, second["transactionId"])
    assert sim.http.get("/sim/hiu/received", params={"transactionId": second["transactionId"]}).json()["documents"]
    assert sim.http.get("/sim/hiu/received", params={"transactionId": third["transactionId"]}).json()["pages"] == []


GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "abdm"
UPDATE_GOLDEN = os.environ.get("ABDM_GOLDEN_UPDATE") == "1"


def _put(h: Hospital, resource: dict[str, Any]) -> None:
    resp = h.fhir.handle(FhirRequest("PUT", f"{resource['resourceType']}/{resource['id']}", resource=resource,
                                     headers={"content-type": "application/fhir+json"}, access=as_system("golden")))
    assert resp.status in (200, 201), resp.resource


@pytest.mark.parametrize("hi_type", ["OPConsultation", "Prescription", "WellnessRecord"])
def test_documents_match_their_golden_files(hospital: Hospital, hi_type: str) -> None:
    """The mapping (records.json) as a whole: one fixed visit built into each record, compared with the
    document kept under tests/golden/abdm (ABDM_GOLDEN_UPDATE=1 rewrites them), and valid against the IG."""
    patient = {"resourceType": "Patient", "id": "golden-patient", "gender": "female", "birthDate": "1979-03-02",
               "name": [{"text": "Hina Patel"}],
               "identifier": [{"system": ABHA_NUMBER_SYSTEM, "value": "91-1111-2222-3333"}]}
    subject, visit = {"reference": "Patient/golden-patient"}, {"reference": "Encounter/golden-visit"}
    loinc = "http://loinc.org"
    vitals = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                           "code": "vital-signs"}]}]
    for resource in (
            patient,
            {"resourceType": "Practitioner", "id": "golden-doctor", "name": [{"prefix": ["Dr."], "given": ["Manju"]}],
             "identifier": [{"system": "https://doctor.ndhm.gov.in", "value": "21-1521-3828-3227"}]},
            {"resourceType": "Encounter", "id": "golden-visit", "status": "finished", "subject": subject,
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "participant": [{"individual": {"reference": "Practitioner/golden-doctor"}}],
             "type": [{"text": "General OPD"}], "period": {"start": "2024-03-01T10:00:00+05:30"}},
            {"resourceType": "Condition", "id": "golden-fever", "subject": subject, "encounter": visit,
             "code": {"text": "Fever"}, "recordedDate": "2024-03-01"},
            {"resourceType": "Observation", "id": "golden-pulse", "status": "final", "category": vitals,
             "code": {"coding": [{"system": loinc, "code": "8867-4", "display": "Heart rate"}]}, "subject": subject,
             "encounter": visit, "effectiveDateTime": "2024-03-01T10:05:00+05:30",
             "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
            {"resourceType": "Observation", "id": "golden-weight", "status": "final", "category": vitals,
             "code": {"coding": [{"system": loinc, "code": "29463-7", "display": "Body weight"}]}, "subject": subject,
             "encounter": visit, "effectiveDateTime": "2024-03-01T10:06:00+05:30",
             "valueQuantity": {"value": 61, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}},
            {"resourceType": "MedicationRequest", "id": "golden-rx", "status": "active", "intent": "order",
             "subject": subject, "encounter": visit, "medicationCodeableConcept": {"text": "Paracetamol 500 mg"},
             "authoredOn": "2024-03-01", "requester": {"reference": "Practitioner/golden-doctor"},
             "dosageInstruction": [{"text": "One tablet three times a day"}]}):
        _put(hospital, resource)
    dates = DateRange(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC))
    documents = hospital.fhir.uow.run(
        lambda repo: DocumentBuilder(repo, HIP_ID, "Test Hospital", "https://hospital.example/abdm/documents")
        .build("Encounter/golden-visit", hi_type, dates), write=False, access=as_system("golden documents"))
    assert len(documents) == 1
    document = documents[0]
    outcome = hospital.fhir.handle(FhirRequest("POST", "Bundle/$validate", resource=document,
                                               headers={"content-type": "application/fhir+json"},
                                               access=as_system("test")))
    assert [i for i in (outcome.resource or {})["issue"] if i["severity"] in ("error", "fatal")] == []
    document["meta"].pop("lastUpdated")  # the moment it was built: all else is the mapping's
    document.pop("timestamp")
    path = GOLDEN / f"{hi_type}.json"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    assert document == orjson.loads(path.read_bytes())

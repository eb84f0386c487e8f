"""ABDM, our hospital as HIU, over real HTTP: the simulator plays the gateway, the consent manager and the
remote HIP that pushes encrypted records to us."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhir_server.rest.request import FhirRequest
from fhir_server.storage.access import as_system
from tests.conftest import wait_until
from tests.integration.abdm_support import (
    NOTIFY,
    Hospital,
    Simulator,
    hospital_on,
    start_simulator,
    visit_data,
)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    yield from start_simulator()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(request: pytest.FixtureRequest, sim: Simulator, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Hospital]:
    yield from hospital_on(request.param, sim, tmp_path_factory)



def test_our_hiu_pulls_another_facilitys_records(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital, address=f"pull{uuid.uuid4().hex[:8]}@sbx")
    erase_at = (datetime.now(UTC) + timedelta(seconds=25)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    resp = hospital.http.post("/abdm/hiu/consent-requests", headers=hospital.admin, json={
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

    try:
        wait_until(lambda: len(stored()) >= 2, 30, "the pulled documents")
    except AssertionError:
        raise AssertionError(f"not stored: {sim.http.get('/sim/state').json()['pushes']}") from None
    provenance = stored()
    assert {p["agent"][0]["who"]["identifier"]["value"] for p in provenance} == {"SIM-HIP"}
    bundles = [hospital.read(p["target"][0]["reference"]) for p in provenance]
    expected = [f"sim-{kind}:{data['address']}" for kind in ("op", "rx")]
    assert sorted(b["identifier"]["value"] for b in bundles) == expected
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
    again = hospital.http.post(f"/abdm/hiu/consents/{consent_ref.split('/')[1]}/pull", headers=hospital.admin)
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


def test_a_revoked_consent_erases_what_our_hiu_received(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital, address=f"revk{uuid.uuid4().hex[:8]}@sbx")
    resp = hospital.http.post("/abdm/hiu/consent-requests", headers=hospital.admin, json={
        "patient": f"Patient/{data['patient']}", "hiTypes": ["Prescription"],
        "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
        "dataEraseAt": "2030-01-01T00:00:00.000Z"})
    request_consent = resp.json()["consent"]
    ids: list[str] = []

    def registered() -> bool:
        ids[:] = [i["value"] for i in hospital.read(request_consent)["identifier"]
                  if i["system"] == "https://abdm.gov.in/consent-request"]
        return bool(ids)

    wait_until(registered, 20, "the consent request's on-init")
    sim.post("/sim/cm/grant", {"consentRequestId": ids[0]})
    documents: list[str] = []

    def stored() -> bool:
        found = hospital.read("Bundle", [("identifier", f"https://sim-hip.example/documents|sim-rx:{data['address']}")])
        documents[:] = [e["resource"]["id"] for e in found.get("entry", [])]
        return bool(documents)

    wait_until(stored, 30, "the pulled prescription")
    assert hospital.read(request_consent)["status"] == "active"
    sim.post("/sim/cm/revoke", {"consentRequestId": ids[0]})
    wait_until(lambda: not stored(), 30, "erasure on revocation")
    assert hospital.read(request_consent)["status"] == "inactive"
    gone = hospital.fhir.handle(FhirRequest("GET", f"Bundle/{documents[0] if documents else 'x'}",
                                            access=as_system("test")))
    assert gone.status in (404, 410)


def test_tampered_pushes_are_refused(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital, address=f"tamp{uuid.uuid4().hex[:8]}@sbx")
    sim.post("/sim/config", {"tamperNext": True})
    resp = hospital.http.post("/abdm/hiu/consent-requests", headers=hospital.admin, json={
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


def test_an_artefact_without_the_managers_signature_is_not_stored(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital, address=f"sign{uuid.uuid4().hex[:8]}@sbx")
    resp = hospital.http.post("/abdm/hiu/consent-requests", headers=hospital.admin, json={
        "patient": f"Patient/{data['patient']}", "hiTypes": ["Prescription"],
        "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
        "dataEraseAt": "2030-01-01T00:00:00.000Z"})
    request_consent = resp.json()["consent"]
    ids: list[str] = []

    def registered() -> bool:
        ids[:] = [i["value"] for i in hospital.read(request_consent)["identifier"]
                  if i["system"] == "https://abdm.gov.in/consent-request"]
        return bool(ids)

    wait_until(registered, 20, "the consent request's on-init")
    sim.post("/sim/config", {"badSignatures": True})
    try:
        artefact = sim.post("/sim/cm/grant", {"consentRequestId": ids[0]})["consentId"]

        def refused() -> bool:
            events = hospital.read("AuditEvent", [("subtype", "urn:fhir-server:abdm|abdm-consent-fetch"),
                                                  ("_count", "100")])
            return any("bad signature" in str(e["resource"]) for e in events.get("entry", []))

        wait_until(refused, 20, "the forged artefact refused")
    finally:
        sim.post("/sim/config", {"badSignatures": False})
    found = hospital.read("Consent", [("identifier", f"https://abdm.gov.in/consent-artefact|{artefact}")])
    assert found.get("entry", []) == []  # not stored, and no data asked for under it
    assert not [e for e in sim.log("/data-flow/v3/health-information/request")
                if e["body"]["hiRequest"]["consent"]["id"] == artefact]


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

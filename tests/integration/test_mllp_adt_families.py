"""Issue 14 items 4-6 over real loopback MLLP sockets, on both databases: the practitioners, locations and
identifiers of ADT's secondary segments (found, not created twice), bed status (A20), A29, pharmacy (RDE, RDS,
RAS, ORM without OBR), general orders (OMG), referrals (REF), problems (PPR), master files (MFN M02/M05), and
ADT merges under the front desk's merge rules (FHIR_WORKFLOWS=frontdesk)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from interfaces.mllp.listener import MllpListener
from tests.conftest import Backend, FhirHttpProtocol, LiveServer, _free_port, uvicorn_config, wait_until
from tests.integration.test_mllp import Running, exchange, golden, search, segment

LOCATION = "urn:fhir-server:hl7v2:location:HOSP"


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def _resources(api: LiveServer, query: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in search(api, query).get("entry", [])]


def _codes(acks: list[str]) -> list[str]:
    return [segment(a, "MSA")[1] for a in acks]


def _again(name: str, control_id: str, *replace: tuple[str, str]) -> bytes:
    """A golden message re-sent under another control id (with some text replaced)."""
    text = golden(name).decode()
    old_id = text.split("\r", 1)[0].split("|")[9]
    text = text.replace(f"|{old_id}|", f"|{control_id}|", 1)
    for old, new in replace:
        text = text.replace(old, new)
    return text.encode()


def test_adt_practitioners_locations_and_identifiers(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, golden("ADT_A01/secondary_segments.hl7"), golden("ADT_A20/bed_status.hl7"),
                    _again("ADT_A01/secondary_segments.hl7", "ADT-0201-B"), golden("MFN_M05/locations.hl7"))
    assert _codes(acks) == ["AA"] * 4, acks
    [patient] = _resources(api, "Patient?identifier=ADT-300")
    systems = {i.get("system"): i["value"] for i in patient["identifier"]}
    assert systems["http://hl7.org/fhir/sid/us-ssn"] == "123-45-6789"
    assert any(i["value"] == "MH1234567" and i["type"]["coding"][0]["code"] == "DL" for i in patient["identifier"])
    practitioners = {p["identifier"][0]["value"]: p for p in _resources(api, "Practitioner?_count=50")}
    assert set(practitioners) == {"3001", "3002", "3003", "3004", "4001"}  # twice sent, each found, not re-made
    gp = patient["generalPractitioner"]
    assert gp[0]["display"] == "Sunrise Clinic" and gp[1]["reference"] == f"Practitioner/{practitioners['4001']['id']}"
    [encounter] = _resources(api, "Encounter?identifier=ADM-300")
    by_type = {p["type"][0]["coding"][0]["code"]: p["individual"]["reference"] for p in encounter["participant"]}
    assert by_type["ATND"] == by_type["ADM"] == f"Practitioner/{practitioners['3001']['id']}"
    assert by_type["REF"] == f"Practitioner/{practitioners['3002']['id']}"
    [role] = _resources(api, f"PractitionerRole?practitioner=Practitioner/{practitioners['3004']['id']}")
    assert role["code"][0]["coding"][0]["code"] == "AT" and f"PractitionerRole/{role['id']}" in by_type.values()
    # PV1-3 -> bed in room in ward, each found or created once; the A20 set the bed's status, the M05 its name.
    locations = {loc["identifier"][0]["value"]: loc for loc in _resources(api, "Location?_count=50")}
    assert set(locations) == {"4N", "4N^401", "4N^401^B"}
    ward, room, bed = locations["4N"], locations["4N^401"], locations["4N^401^B"]
    assert bed["partOf"]["reference"] == f"Location/{room['id']}"
    assert room["partOf"]["reference"] == f"Location/{ward['id']}"
    assert encounter["location"][0]["location"]["reference"] == f"Location/{bed['id']}"
    assert bed["name"] == "Bed B, room 401" and ward["name"] == "Fourth floor north ward"
    # the M05 came after the A20: a master file's update of the bed keeps no status it did not send
    [coverage] = _resources(api, f"Coverage?beneficiary=Patient/{patient['id']}")
    assert {"value": "MEM-55", "system": "urn:fhir-server:hl7v2:authority:STAR",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}} \
        in coverage["identifier"]


def test_bed_status_update(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, golden("ADT_A20/bed_status.hl7"),
                    _again("ADT_A20/bed_status.hl7", "ADT-0202-B", ("|H\r", "|U\r")))
    assert _codes(acks) == ["AA", "AA"], acks
    [bed] = _resources(api, f"Location?identifier={LOCATION}|4N^401^B")
    assert bed["operationalStatus"]["code"] == "U"  # the latest status
    assert len(_resources(api, "Location")) == 3
    # a bed named without its room is part of its ward
    [ack] = exchange(mllp.port, _again("ADT_A20/bed_status.hl7", "ADT-0202-D", ("4N^401^B", "4N^^C")))
    assert segment(ack, "MSA")[1] == "AA", ack
    [ward] = _resources(api, f"Location?identifier={LOCATION}|4N")
    [roomless] = _resources(api, f"Location?identifier={LOCATION}|4N^^C")
    assert roomless["partOf"]["reference"] == f"Location/{ward['id']}" and roomless["name"] == "4N C"
    [bad] = exchange(mllp.port, _again("ADT_A20/bed_status.hl7", "ADT-0202-C", ("|H\r", "|Z\r")))
    assert segment(bad, "MSA")[1] == "AE" and segment(bad, "ERR")[2].startswith("NPU^1^2"), bad


def test_a29_deactivates_instead_of_deleting(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, _again("ADT_A29/delete_person.hl7", "ADT-0203-A", ("A29^ADT_A21", "A04^ADT_A01"),
                                      ("EVN|A29", "EVN|A04")), golden("ADT_A29/delete_person.hl7"))
    assert _codes(acks) == ["AA", "AA"], acks
    [patient] = _resources(api, "Patient?identifier=ADT-301")
    assert patient["active"] is False and patient["name"][0]["family"] == "Verma"


def test_pharmacy_messages(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, golden("RDE_O11/pharmacy_order.hl7"), golden("RDS_O13/dispense.hl7"),
                    golden("RAS_O17/administration.hl7"), golden("ORM_O01/pharmacy_diet_supply_no_obr.hl7"))
    assert _codes(acks) == ["AA"] * 4, acks
    requests = {r["medicationCodeableConcept"]["coding"][0]["code"]: r
                for r in _resources(api, "MedicationRequest?_count=50")}
    assert set(requests) == {"C0000000", "C0000001"}  # the RDS and the RAS found the RDE's order
    amoxicillin = requests["C0000000"]
    assert amoxicillin["dosageInstruction"][0]["route"]["coding"][0]["code"] == "PO"
    assert amoxicillin["dispenseRequest"]["quantity"]["value"] == 21
    [dispense] = _resources(api, "MedicationDispense")
    assert dispense["authorizingPrescription"][0]["reference"] == f"MedicationRequest/{amoxicillin['id']}"
    [given] = _resources(api, "MedicationAdministration")
    assert given["request"]["reference"] == f"MedicationRequest/{amoxicillin['id']}"
    assert given["status"] == "completed" and given["dosage"]["dose"]["value"] == 500
    [diet] = _resources(api, "NutritionOrder")
    assert diet["oralDiet"]["type"][0]["coding"][0]["code"] == "DM"
    [supply] = _resources(api, "SupplyRequest")
    assert supply["quantity"]["value"] == 50
    assert not _resources(api, "ServiceRequest")
    [nothing] = exchange(mllp.port, _again("ORM_O01/pharmacy_diet_supply_no_obr.hl7", "ORM-0101-B",
                                           ("RXO|", "ZXO|"), ("ODS|", "ZDS|"), ("RQD|", "ZQD|")))
    assert segment(nothing, "MSA")[1] == "AE" and "OBR" in segment(nothing, "ERR")[2], nothing


def test_orders_referrals_problems_and_staff(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, golden("OMG_O19/general_order.hl7"), golden("REF_I12/referral.hl7"),
                    golden("PPR_PC1/problem.hl7"), golden("MFN_M02/staff.hl7"),
                    _again("PPR_PC1/problem.hl7", "PPR-0003", ("PPR^PC1", "PPR^PC3")))
    assert _codes(acks) == ["AA"] * 5, acks
    orders = _resources(api, "ServiceRequest?_count=50")
    [ecg] = [o for o in orders if o["code"]["coding"][0]["code"] == "11524-6"]
    [referral] = [o for o in orders if o.get("category")]
    assert referral["category"][0]["coding"][0]["code"] == "3457005"
    assert referral["requester"]["display"] == "Meera Iyer"
    reason = api.http.get(referral["reasonReference"][0]["reference"]).json()
    assert reason["code"]["coding"][0]["code"] == "I20.9"
    assert api.http.get(referral["supportingInfo"][0]["reference"]).json()["valueQuantity"]["value"] == 96
    problems = [c for c in _resources(api, "Condition?category=problem-list-item")]
    assert len(problems) == 2  # PC1 then PC3 of the same problems: the same two Conditions
    assert {p["verificationStatus"]["coding"][0]["code"] for p in problems} == {"entered-in-error"}
    staff = {p["identifier"][0]["value"]: p for p in _resources(api, "Practitioner?_count=50")}
    assert staff["3001"]["active"] is True and staff["3099"]["active"] is False
    assert any(i["value"] == "MCI-88123" for i in staff["3001"]["identifier"])
    assert ecg["requester"]["display"] == "Vikram Rao"


# --- ADT merges under the front desk's rules ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def frontdesk(backend: Backend) -> Iterator[LiveServer]:
    """A server of this backend with FHIR_WORKFLOWS=frontdesk (auth off, as the shared ``live``)."""
    app, fhir, fhir_path = backend.server_app(backend.settings.model_copy(update={"workflows": "frontdesk"}))
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           http=FhirHttpProtocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}{fhir_path}/", timeout=60,
                      headers={"Accept": "application/fhir+json"}) as http:
        yield LiveServer(f"http://127.0.0.1:{port}{fhir_path}", fhir, backend, http)
    server.should_exit = True
    thread.join(timeout=20)


def _adt(control_id: str, event: str, mrn: str, family: str, visit: str = "", prior: str = "") -> bytes:
    structure = "ADT_A39" if prior else "ADT_A01"
    lines = [f"MSH|^~\\&|HIS|HOSP|FHIR|HOSP|20240306090000||ADT^{event}^{structure}|{control_id}|P|2.5.1",
             f"EVN|{event}|20240306090000",
             f"PID|1||{mrn}^^^HOSP^MR||{family}^Asha||19850505|F"]
    lines += [f"MRG|{prior}^^^HOSP^MR"] if prior else [f"PV1|1|I|4N^402^A^HOSP||||||||||||||||{visit}^^^HOSP^VN"]
    return ("\r".join(lines) + "\r").encode()


def test_merge_follows_the_front_desks_rules(frontdesk: LiveServer) -> None:
    frontdesk.backend.truncate()
    running = Running(MllpListener(frontdesk.fhir, host="127.0.0.1", port=0))
    try:
        acks = exchange(running.port, _adt("M-1", "A01", "FD-1", "Kulkarni", "V-1"),
                        _adt("M-2", "A01", "FD-2", "Kulkarni", "V-2"),
                        _adt("M-3", "A40", "FD-2", "Kulkarni", prior="FD-1"),
                        _adt("M-4", "A40", "FD-2", "Kulkarni", prior="FD-1"))  # the merge again: nothing to do
        assert _codes(acks) == ["AA"] * 4, acks
        [old] = _resources(frontdesk, "Patient?identifier=FD-1")
        [new] = _resources(frontdesk, "Patient?identifier=FD-2")
        assert old["active"] is False and old["name"][0]["family"] == "Kulkarni"  # kept, not overwritten
        assert old["link"] == [{"other": {"reference": f"Patient/{new['id']}"}, "type": "replaced-by"}]
        assert {"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"} in new["link"]
        [moved] = _resources(frontdesk, "Encounter?identifier=V-1")  # the old patient's visit moved
        assert moved["subject"]["reference"] == f"Patient/{new['id']}"
        merges = [p for p in _resources(frontdesk, "Provenance?_count=50")
                  if p["activity"]["coding"][0]["code"] == "merge"]
        assert len(merges) == 1 and {"role": "source", "what": {"identifier": {
            "system": "urn:fhir-server:hl7v2-message", "value": "HIS|HOSP|M-3"}}} in merges[0]["entity"]
        # a merge into the patient that was merged away breaks the rule: AE, and nothing of it is written
        created, refused = exchange(running.port, _adt("M-5", "A01", "FD-3", "Joshi", "V-3"),
                                    _adt("M-6", "A40", "FD-1", "Kulkarni", prior="FD-3"))
        assert segment(created, "MSA")[1] == "AA" and segment(refused, "MSA")[1] == "AE", refused
        assert "merge-target-inactive" in refused or "inactive or merged" in refused
        [still] = _resources(frontdesk, "Patient?identifier=FD-3")
        assert still["active"] is True and "link" not in still
    finally:
        running.stop()

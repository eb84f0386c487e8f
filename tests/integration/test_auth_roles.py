"""Who may do what beyond resource scopes, over real HTTP on both databases: EHR launch contexts only by
EHR-side callers for patients they may read; $reindex only by administrators; a receptionist's view of
Encounter, Appointment and Patient without their clinical elements, by every path (read, vread, history,
search, _include, bulk export, $events, rest-hook payloads), and writes of that view that erase nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from fhir_server.auth.masks import SD
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.subscriptions import install_delivery
from tests.conftest import Backend
from tests.integration.bulk_support import export
from tests.integration.subscription_receiver import start_receiver
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}
SNOMED = "http://snomed.info/sct"
DISABILITY = SD + "patient-disability"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def _create(smart: Smart, resource: dict[str, Any]) -> dict[str, Any]:
    r = smart.as_admin("POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def chart(smart: Smart) -> dict[str, Any]:
    smart.backend.truncate()
    a = _create(smart, {"resourceType": "Patient", "name": [{"family": "Alpha"}], "gender": "female",
                        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Alpha, '
                                                           'wheelchair, type 2 diabetes</div>'},
                        "extension": [{"url": DISABILITY, "valueCodeableConcept": {"text": "paraplegia"}},
                                      {"url": "http://example.org/vip", "valueBoolean": True}]})
    b = _create(smart, {"resourceType": "Patient", "name": [{"family": "Beta"}]})
    pid = a["id"]
    condition = _create(smart, {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                                "code": {"coding": [{"system": SNOMED, "code": "44054006"}]}})
    encounter = _create(smart, {
        "resourceType": "Encounter", "status": "planned",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "reasonCode": [{"coding": [{"system": SNOMED, "code": "29857009", "display": "Chest pain"}]}],
        "diagnosis": [{"condition": {"reference": f"Condition/{condition['id']}"}}],
        "hospitalization": {"admitSource": {"text": "walk-in"}, "dietPreference": [{"text": "diabetic"}]}})
    appointment = _create(smart, {
        "resourceType": "Appointment", "status": "booked", "description": "Follow-up",
        "reasonCode": [{"text": "chest pain"}], "comment": "rule out angina",
        "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}]})
    return {"a": pid, "b": b["id"], "condition": condition["id"], "encounter": encounter["id"],
            "appointment": appointment["id"]}


def _token(smart: Smart, role: str, scope: str = "user/*.cruds", **kw: Any) -> str:
    return str(_user_token(smart, role, scope, **kw)["access_token"])


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(s.get("code") == "SUBSETTED" for s in resource.get("meta", {}).get("security", []))


def _assert_masked(resource: dict[str, Any]) -> None:
    rtype = resource["resourceType"]
    assert _subsetted(resource), resource
    assert "text" not in resource
    if rtype == "Encounter":
        assert not {"reasonCode", "reasonReference", "diagnosis"} & set(resource), resource
        assert set(resource["hospitalization"]) == {"admitSource"}  # no dietPreference
        assert resource["class"]["code"] == "AMB"
    elif rtype == "Appointment":
        assert not {"reasonCode", "comment", "supportingInformation"} & set(resource), resource
        assert resource["description"] == "Follow-up"
    elif rtype == "Patient":
        assert [e["url"] for e in resource.get("extension", [])] in ([], ["http://example.org/vip"])
        assert "name" in resource


# --- EHR launch --------------------------------------------------------------------------------------------

def _launch(smart: Smart, token: str, body: dict[str, Any]) -> Any:
    return smart.http.post(f"{smart.root}/auth/launch", json=body, headers={"Authorization": f"Bearer {token}"})


def test_launch_only_by_ehr_side_callers_who_may_read_the_patient(smart: Smart, chart: dict[str, Any]) -> None:
    pid = chart["a"]
    patient = _token(smart, "patient", "launch/patient patient/*.rs user/*.rs", fhir_user=f"Patient/{pid}")
    refused = _launch(smart, patient, {"patient": pid})
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    assert _launch(smart, smart.system_token("system/*.rs"), {"patient": pid}).status_code == 403  # no launch
    # A doctor whose token reaches patient B only may not launch A's chart.
    other = _token(smart, "doctor", "launch/patient patient/*.rs", patient=chart["b"])
    assert _launch(smart, other, {"patient": pid}).status_code == 403
    assert _launch(smart, other, {"patient": chart["b"]}).status_code == 200
    assert _launch(smart, smart.system_token("launch system/Observation.rs"), {"patient": pid}).status_code == 403
    backend = smart.system_token("launch system/Patient.rs system/Encounter.rs")
    assert _launch(smart, backend, {"patient": pid}).json()["expires_in"] == 300
    assert _launch(smart, backend, {"patient": "no-such"}).status_code == 404
    for role in ("doctor", "admin"):
        ok = _launch(smart, _token(smart, role, "user/*.rs"), {"patient": pid, "encounter": chart["encounter"]})
        assert ok.status_code == 200 and ok.json()["launch"], ok.text
    # An encounter of another patient is not a context for this one.
    assert _launch(smart, backend, {"patient": chart["b"], "encounter": chart["encounter"]}).status_code == 400


# --- administrative operations -----------------------------------------------------------------------------

def test_reindex_needs_an_administrator(smart: Smart, chart: dict[str, Any]) -> None:
    params = orjson.dumps({"resourceType": "Parameters"})
    for token in (_token(smart, "doctor"), smart.system_token("system/Patient.cruds"),
                  smart.system_token("system/*.rs")):
        r = smart.fhir("POST", "Patient/$reindex", token, content=params, headers=JSON)
        assert r.status_code == 403 and r.json()["issue"][0]["expression"] == ["$reindex"], r.text
        # Bundles carry operations as GET entries (a POST entry is a create): refused before anything else.
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "$reindex"}}, {"request": {"method": "GET", "url": "$import"}}]}
        out = smart.fhir("POST", "", token, content=orjson.dumps(batch), headers=JSON).json()
        assert [e["response"]["status"][:3] for e in out["entry"]] == ["403", "403"], out
    for token in (_token(smart, "admin"), smart.system_token("system/*.cruds"), smart.system_token("system/*.write")):
        r = smart.fhir("POST", "Patient/$reindex", token, content=params, headers=JSON)
        assert r.status_code == 200 and r.json()["parameter"][0]["valueInteger"] == 2, r.text


# --- role-level element masks ------------------------------------------------------------------------------

def test_receptionist_reads_searches_and_includes_without_clinical_elements(smart: Smart,
                                                                           chart: dict[str, Any]) -> None:
    front = _token(smart, "receptionist")
    eid, aid, pid = chart["encounter"], chart["appointment"], chart["a"]
    for path in (f"Encounter/{eid}", f"Encounter/{eid}/_history/1", f"Appointment/{aid}", f"Patient/{pid}"):
        r = smart.fhir("GET", path, front)
        assert r.status_code == 200, r.text
        _assert_masked(r.json())
    history = smart.fhir("GET", f"Encounter/{eid}/_history", front).json()
    searches = [smart.fhir("GET", "Encounter?_include=Encounter:subject", front).json(),
                smart.fhir("GET", "Appointment?_include=Appointment:actor", front).json(),
                smart.fhir("GET", f"Patient/{pid}/$everything", front).json(), history]
    found = [e["resource"] for b in searches for e in b.get("entry", []) if "resource" in e]
    assert {r["resourceType"] for r in found} == {"Encounter", "Appointment", "Patient"}
    for resource in found:
        _assert_masked(resource)
    # Clinicians see the whole resource, unlabelled.
    full = smart.fhir("GET", f"Encounter/{eid}", _token(smart, "doctor")).json()
    assert full["reasonCode"] and full["diagnosis"] and not _subsetted(full)
    assert smart.fhir("GET", f"Condition/{chart['condition']}", front).status_code == 403


def test_receptionist_cannot_search_by_what_is_masked(smart: Smart, chart: dict[str, Any]) -> None:
    front = _token(smart, "receptionist")
    for query in (f"Encounter?reason-code={SNOMED}|29857009", f"Encounter?diagnosis=Condition/{chart['condition']}",
                  "Appointment?reason-code=x", "Encounter?_text=diabetes", "Patient?_content=paraplegia",
                  f"Patient?_has:Encounter:patient:reason-code={SNOMED}|29857009",
                  "Appointment?_include=Appointment:supporting-info", "Encounter?_include=*",
                  f"Patient?_revinclude=Appointment:supporting-info&_id={chart['a']}"):
        r = smart.fhir("GET", query, front)
        assert r.status_code == 403, (query, r.text)
        assert "role" in r.json()["issue"][0]["diagnostics"]
    assert smart.fhir("GET", f"Encounter?reason-code={SNOMED}|29857009", _token(smart, "doctor")).json()["total"] == 1
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "oracle",
           "criteria": f"Encounter?reason-code={SNOMED}|29857009", "channel": {"type": "websocket"}}
    assert smart.fhir("POST", "Subscription", front, content=orjson.dumps(sub), headers=JSON).status_code == 403


def test_receptionist_writes_back_the_masked_view_without_erasing(smart: Smart, chart: dict[str, Any]) -> None:
    front = _token(smart, "receptionist")
    eid = chart["encounter"]
    seen = smart.fhir("GET", f"Encounter/{eid}", front).json()
    seen["status"] = "arrived"
    seen["hospitalization"]["admitSource"] = {"text": "referral"}
    put = smart.fhir("PUT", f"Encounter/{eid}", front, content=orjson.dumps(seen), headers=JSON)
    assert put.status_code == 200, put.text
    _assert_masked(put.json())  # the answer is the receptionist's view too
    patch = [{"op": "replace", "path": "/status", "value": "in-progress"}]
    patched = smart.fhir("PATCH", f"Encounter/{eid}", front, content=orjson.dumps(patch),
                         headers={"Content-Type": "application/json-patch+json"})
    assert patched.status_code == 200, patched.text
    stored = smart.fhir("GET", f"Encounter/{eid}", _token(smart, "doctor")).json()
    assert stored["status"] == "in-progress" and stored["hospitalization"] == {
        "admitSource": {"text": "referral"}, "dietPreference": [{"text": "diabetic"}]}
    assert stored["reasonCode"][0]["coding"][0]["code"] == "29857009" and stored["diagnosis"]
    assert not _subsetted(stored) and stored["meta"]["versionId"] == "3"
    # Setting a masked element is refused, naming it; nothing is written.
    seen["reasonCode"] = [{"text": "headache"}]
    refused = smart.fhir("PUT", f"Encounter/{eid}", front, content=orjson.dumps(seen), headers=JSON)
    assert refused.status_code == 403 and refused.json()["issue"][0]["expression"] == ["Encounter.reasonCode"]
    new = {"resourceType": "Appointment", "status": "proposed", "comment": "asthma review",
           "participant": [{"actor": {"reference": f"Patient/{chart['a']}"}, "status": "needs-action"}]}
    created = smart.fhir("POST", "Appointment", front, content=orjson.dumps(new), headers=JSON)
    assert created.status_code == 403 and created.json()["issue"][0]["expression"] == ["Appointment.comment"]
    assert smart.fhir("GET", f"Encounter/{eid}", front).json()["meta"]["versionId"] == "3"


def test_receptionist_export_is_masked(smart: Smart, chart: dict[str, Any]) -> None:
    front = _token(smart, "receptionist")
    found = export(smart.http, f"{smart.base}/$export?_type=Encounter,Appointment,Patient,Condition", front)
    assert set(found) == {"Encounter", "Appointment", "Patient"}  # no Condition for the front desk
    for lines in found.values():
        for resource in lines:
            _assert_masked(resource)
    full = export(smart.http, f"{smart.base}/$export?_type=Encounter", _token(smart, "doctor"))
    assert full["Encounter"][0]["reasonCode"] and not _subsetted(full["Encounter"][0])


def test_receptionist_subscription_events_are_masked(smart: Smart, chart: dict[str, Any]) -> None:
    front = _token(smart, "receptionist")
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "front desk board",
           "criteria": "Encounter?status=finished", "channel": {"type": "websocket"}}
    created = smart.fhir("POST", "Subscription", front, content=orjson.dumps(sub), headers=JSON)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    doctor = _token(smart, "doctor")
    current = smart.fhir("GET", f"Encounter/{chart['encounter']}", doctor).json()
    done = smart.fhir("PUT", f"Encounter/{chart['encounter']}", doctor,
                      content=orjson.dumps({**current, "status": "finished"}), headers=JSON)
    assert done.status_code == 200, done.text
    events = smart.fhir("GET", f"Subscription/{sid}/$events?content=full-resource", front)
    assert events.status_code == 200, events.text
    focus = [e["resource"] for e in events.json()["entry"][1:]]
    assert [r["id"] for r in focus] == [chart["encounter"]] and focus[0]["status"] == "finished"
    _assert_masked(focus[0])
    assert smart.fhir("DELETE", f"Subscription/{sid}", front).status_code in (200, 204)


def test_receptionist_rest_hook_payloads_are_masked(smart: Smart, chart: dict[str, Any]) -> None:
    front = _token(smart, "receptionist")
    hook = start_receiver()
    try:
        sub = {"resourceType": "Subscription", "status": "requested", "reason": "front desk board",
               "criteria": "Appointment?status=arrived",
               "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json"}}
        created = smart.fhir("POST", "Subscription", front, content=orjson.dumps(sub), headers=JSON)
        assert created.status_code == 201, created.text
        dispatcher = OutboxDispatcher(smart.backend.engine, backoff_base=0.001)
        install_delivery(smart.auth.fhir, dispatcher, timeout=5)
        dispatcher.run_once()  # the handshake
        doctor = _token(smart, "doctor")
        current = smart.fhir("GET", f"Appointment/{chart['appointment']}", doctor).json()
        arrived = smart.fhir("PUT", f"Appointment/{chart['appointment']}", doctor,
                             content=orjson.dumps({**current, "status": "arrived"}), headers=JSON)
        assert arrived.status_code == 200, arrived.text
        dispatcher.run_once()
        (body,) = [b for b in hook.bodies() if b.get("resourceType") == "Appointment"]
        assert body["id"] == chart["appointment"] and body["status"] == "arrived"
        _assert_masked(body)
        smart.as_admin("DELETE", f"Subscription/{created.json()['id']}")
    finally:
        hook.close()

"""Issue 12: every entry point runs with the caller's access (both databases, real HTTP, auth required).

- an ``$export`` inside a batch or transaction Bundle is the Bundle caller's export, owned by them;
- a websocket socket is told only of what whoever bound it may read (and a rest-hook, its author);
- history, vread, If-Match and DELETE answer 403 to a caller who may not read the resource, before any
  404, 410 or 412, whether the resource is live, deleted or was never there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import orjson
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Backend
from tests.integration.bulk_support import ASYNC, download, poll
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_subscriptions_backport import PROFILE, X, params
from tests.integration.test_subscriptions_backport import event_numbers as numbers

JSON = {"Content-Type": "application/fhir+json"}
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
TOPIC = "http://example.org/fhir/SubscriptionTopic/conditions"
EXPORT = "$export?_type=Patient,Condition,AuditEvent"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def _create(smart: Smart, resource: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    r = smart.fhir("POST", resource["resourceType"], token or smart.system_token("system/*.cruds"),
                   content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _condition(patient: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "code": {"text": "confidential diagnosis"},
            "subject": {"reference": f"Patient/{patient}"}}


@pytest.fixture(scope="module")
def records(smart: Smart) -> dict[str, str]:
    smart.backend.truncate()
    a = _create(smart, {"resourceType": "Patient", "name": [{"family": "Alpha"}]})["id"]
    b = _create(smart, {"resourceType": "Patient", "name": [{"family": "Beta"}]})["id"]
    obs_b = _create(smart, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                            "subject": {"reference": f"Patient/{b}"}})
    edited = smart.as_admin("PUT", f"Observation/{obs_b['id']}", content=orjson.dumps({**obs_b, "status": "amended"}),
                            headers=JSON)
    assert edited.status_code == 200, edited.text  # version 2
    gone_b = _create(smart, {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                             "subject": {"reference": f"Patient/{b}"}})["id"]
    assert smart.as_admin("DELETE", f"Observation/{gone_b}").status_code == 204
    return {"a": a, "b": b, "cond_a": _create(smart, _condition(a))["id"],
            "cond_b": _create(smart, _condition(b))["id"], "obs_b": obs_b["id"], "gone_b": gone_b}


# --- leak 1: $export inside a Bundle --------------------------------------------------------------------------------

def _tokens(smart: Smart, records: dict[str, str]) -> dict[str, str]:
    return {
        "patient A": _user_token(smart, "doctor", "launch/patient patient/*.rs", patient=records["a"])["access_token"],
        "receptionist": _user_token(smart, "receptionist", "user/*.rs")["access_token"],
        "backend Patient.read": smart.system_token("system/Patient.read"),
    }


def _files(smart: Smart, status_url: str, token: str) -> set[str]:
    resp = poll(smart.http, status_url, token)
    assert resp.status_code == 200, resp.text
    return {f"{t}/{r['id']}" for t, rs in download(smart.http, resp.json(), token).items() for r in rs}


def _direct(smart: Smart, token: str) -> tuple[int, set[str]]:
    resp = smart.http.get(f"{smart.base}/{EXPORT}", headers={**ASYNC, "Authorization": f"Bearer {token}"})
    if resp.status_code != 202:
        return resp.status_code, set()
    return 202, _files(smart, resp.headers["Content-Location"], token)


def _in_bundle(smart: Smart, token: str, btype: str) -> tuple[int, dict[str, Any]]:
    """(the entry's status, the entry) of the same $export as the one entry of a Bundle."""
    bundle = {"resourceType": "Bundle", "type": btype, "entry": [{"request": {"method": "GET", "url": EXPORT}}]}
    resp = smart.http.post(smart.base, content=orjson.dumps(bundle),
                           headers={**JSON, **ASYNC, "Authorization": f"Bearer {token}"})
    if btype == "transaction" and resp.status_code >= 400:
        return resp.status_code, {}
    assert resp.status_code == 200, resp.text
    entry = resp.json()["entry"][0]
    return int(entry["response"]["status"].split()[0]), entry


def _job_named_in(smart: Smart, entry: dict[str, Any]) -> str:
    """The status URL of the job the entry's OperationOutcome names: all anyone needs to poll it."""
    job = re.search(r"job ([0-9a-f]{32}) accepted", json.dumps(entry))
    assert job is not None, entry
    return f"{smart.base}/$export-poll-status?_jobId={job.group(1)}"


@pytest.mark.parametrize("btype", ["batch", "transaction"])
def test_an_export_inside_a_bundle_is_the_bundle_callers_own(smart: Smart, records: dict[str, str],
                                                             btype: str) -> None:
    other = smart.system_token("system/*.rs")
    for who, token in _tokens(smart, records).items():
        direct_status, direct_files = _direct(smart, token)
        status, entry = _in_bundle(smart, token, btype)
        assert status == direct_status, (who, status, direct_status)
        if status != 202:
            continue
        status_url = _job_named_in(smart, entry)
        # Owned by the caller: nobody else polls it, downloads it or cancels it.
        assert smart.http.get(status_url, headers={"Authorization": f"Bearer {other}"}).status_code == 403, who
        assert smart.http.get(status_url).status_code == 401
        files = _files(smart, status_url, token)
        assert files == direct_files, who  # limited exactly as the same $export sent directly
        assert not any(f.startswith("AuditEvent/") for f in files), who
        assert not {f"Patient/{records['b']}", f"Condition/{records['cond_b']}"} & files \
            or who == "receptionist", who  # the receptionist reads every Patient, never a Condition
        assert not any(f.startswith("Condition/") for f in files) or who == "patient A", who
        assert f"{smart.base}/{entry['response']['location']}" == status_url  # Content-Location, as the entry's
    admin_status, admin_files = _direct(smart, other)
    assert admin_status == 202 and f"Condition/{records['cond_b']}" in admin_files  # the data is there


# --- leak 2: websocket notifications --------------------------------------------------------------------------------

def _topic(smart: Smart) -> None:
    trigger = [{"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/Condition"},
               *({"url": "supportedInteraction", "valueCode": c} for c in ("create", "update", "delete"))]
    _create(smart, {"resourceType": "Basic",
                    "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
                    "extension": [{"url": X + "url", "valueUri": TOPIC}, {"url": X + "status", "valueCode": "active"},
                                  {"url": X + "resourceTrigger", "extension": trigger}]})


def _doctors_subscription(smart: Smart) -> str:
    """A doctor's backport websocket subscription to every Condition, full resources, heartbeat every second."""
    _topic(smart)
    doctor = _user_token(smart, "doctor", "user/Subscription.cruds user/Condition.rs")["access_token"]
    body = {"resourceType": "Subscription", "meta": {"profile": [PROFILE]}, "status": "requested",
            "reason": "my patients' diagnoses", "criteria": TOPIC,
            "channel": {"type": "websocket", "payload": "application/fhir+json",
                        "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content",
                                                    "valueCode": "full-resource"}]},
                        "extension": [{"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": 1}]}}
    return str(_create(smart, body, doctor)["id"])


def _bound(smart: Smart, sid: str, token: str, sockets: ExitStack) -> ClientConnection:
    got = smart.fhir("POST", f"Subscription/{sid}/$get-ws-binding-token", token)
    assert got.status_code == 200, got.text  # reading the Subscription is allowed ...
    value = next(p["valueString"] for p in got.json()["parameter"] if p["name"] == "token")
    ws = sockets.enter_context(connect(smart.base.replace("http://", "ws://") + "/subscriptions/ws"))
    ws.send(f"bind-with-token {value}")
    assert params(json.loads(ws.recv(timeout=10)))["type"] == ["handshake"]
    return ws


def _until_the_event_was_due(ws: ClientConnection) -> list[dict[str, Any]]:
    """Messages up to and including the first poll after one that counted the event (a heartbeat saying
    events-since >= 1): by then the event had been committed for a whole poll, so it was sent or withheld."""
    seen: list[dict[str, Any]] = []
    counted = False
    while True:
        message = json.loads(ws.recv(timeout=10))
        seen.append(message)
        if counted:
            return seen
        p = params(message)
        counted = p["type"] == ["heartbeat"] and int(p["events-since-subscription-start"][0]) >= 1


def test_a_websocket_hears_only_what_its_binder_may_read(smart: Smart, records: dict[str, str]) -> None:
    sid = _doctors_subscription(smart)
    narrow = {"system/Subscription.rs": smart.system_token("system/Subscription.rs"),
              "user/Subscription.rs": _user_token(smart, "doctor", "user/Subscription.rs")["access_token"]}
    allowed = smart.system_token("system/Subscription.rs system/Condition.rs")
    with ExitStack() as opened:
        sockets = {who: _bound(smart, sid, token, opened) for who, token in narrow.items()}
        control = _bound(smart, sid, allowed, opened)
        condition = _create(smart, _condition(records["b"]))
        note = json.loads(control.recv(timeout=10))
        while params(note)["type"] == ["heartbeat"]:
            note = json.loads(control.recv(timeout=10))
        assert params(note)["type"] == ["event-notification"] and note["entry"][1]["resource"] == condition
        for who, ws in sockets.items():
            messages = _until_the_event_was_due(ws)
            assert [params(m)["type"] for m in messages] == [["heartbeat"]] * len(messages), who
            assert condition["id"] not in json.dumps(messages), who
            token = narrow[who]
            assert smart.fhir("GET", f"Condition/{condition['id']}", token).status_code == 403, who
            events = smart.fhir("GET", f"Subscription/{sid}/$events", token)
            assert events.status_code == 200 and numbers(events.json()) == [], who
            assert condition["id"] not in events.text, who


# --- items 5 and 6: 403 before 404, 410 and 412 ----------------------------------------------------------------------

def _status(smart: Smart, method: str, path: str, token: str, **kw: Any) -> int:
    return smart.fhir(method, path, token, **kw).status_code


def test_what_may_not_be_read_answers_403_before_anything_else(smart: Smart, records: dict[str, str]) -> None:
    writer = _user_token(smart, "doctor", "launch/patient patient/*.cruds", patient=records["a"])["access_token"]
    receptionist = _user_token(smart, "receptionist", "user/*.cruds")["access_token"]
    live, gone, never = f"Observation/{records['obs_b']}", f"Observation/{records['gone_b']}", "Observation/never-was"
    for token in (writer, receptionist):
        for path in (live, gone, never):
            assert _status(smart, "GET", path, token) == 403, path
            assert _status(smart, "GET", f"{path}/_history", token) == 403, path  # not 200 with a total
            for version in ("1", "2", "99"):
                assert _status(smart, "GET", f"{path}/_history/{version}", token) == 403, (path, version)
            assert _status(smart, "DELETE", path, token) == 403, path  # not 204 / 404
            assert _status(smart, "DELETE", path, token, headers={"If-Match": 'W/"1"'}) == 403, path
        mine = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": f"Patient/{records['a']}"}}
        put = _status(smart, "PUT", live, token, content=orjson.dumps({**mine, "id": records["obs_b"]}),
                      headers={**JSON, "If-Match": 'W/"1"'})
        assert put == 403  # not 412 "the current version is 2"
        patch = _status(smart, "PATCH", live, token, content=b'[{"op": "replace", "path": "/status", "value": "x"}]',
                        headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'})
        assert patch == 403
    # Whoever may read it still gets the statuses that tell them what is there.
    reader = smart.system_token("system/Observation.cruds")
    assert _status(smart, "GET", f"{live}/_history/99", reader) == 404
    assert _status(smart, "GET", f"{gone}", reader) == 410
    assert _status(smart, "GET", never, reader) == 404
    assert _status(smart, "DELETE", never, reader) == 404
    assert _status(smart, "DELETE", gone, reader) == 204
    assert _status(smart, "DELETE", live, reader, headers={"If-Match": 'W/"1"'}) == 412
    history = smart.fhir("GET", f"{live}/_history", reader).json()
    assert history["total"] == 2
    # And the patient's own record stays theirs to delete.
    own = _create(smart, {"resourceType": "Observation", "status": "final", "code": {"text": "mine"},
                          "subject": {"reference": f"Patient/{records['a']}"}}, writer)
    assert _status(smart, "DELETE", f"Observation/{own['id']}", writer) == 204
    assert _status(smart, "DELETE", f"Observation/{own['id']}", writer) == 204  # already gone: still theirs

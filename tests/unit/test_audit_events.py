"""AuditEvent building and request classification (pure; the HTTP behaviour is in tests/integration/test_audit*.py)."""

from __future__ import annotations

import base64

import pytest

from fhir_server.audit.classify import classify, query_text
from fhir_server.audit.codes import DCM, coding, own
from fhir_server.audit.events import SERVER, Actor, Record, audit_event, interaction, outcome
from fhir_server.rest.request import FhirRequest
from fhir_server.validation import ResourceValidator
from tests.conftest import SYSTEM


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "Patient/1", ("read", "R", ("Patient/1",))),
    ("HEAD", "Patient/1", ("read", "R", ("Patient/1",))),
    ("GET", "Patient/1/_history/2", ("vread", "R", ("Patient/1",))),
    ("GET", "Patient/1/_history", ("history-instance", "R", ("Patient/1",))),
    ("GET", "Patient/_history", ("history-type", "R", ())),
    ("GET", "_history", ("history-system", "R", ())),
    ("GET", "Observation", ("search-type", "R", ())),
    ("POST", "Observation/_search", ("search-type", "R", ())),
    ("GET", "", ("search-system", "R", ())),
    ("GET", "Patient/1/Observation", ("search", "R", ("Patient/1",))),
    ("POST", "Patient", ("create", "C", ())),
    ("PUT", "Patient/1", ("update", "U", ("Patient/1",))),
    ("PATCH", "Patient/1", ("patch", "U", ("Patient/1",))),
    ("DELETE", "Patient/1", ("delete", "D", ("Patient/1",))),
    ("DELETE", "Patient", ("delete", "D", ())),
    ("POST", "ValueSet/$expand", ("operation", "E", ())),
    ("GET", "Patient/1/$everything", ("operation", "E", ("Patient/1",))),
    ("POST", "", ("transaction", "E", ())),
])
def test_classify(method: str, path: str, expected: tuple[str, str, tuple[str, ...]]) -> None:
    what = classify(method, path)
    assert what is not None and (what.code, what.action, what.targets) == expected


def test_discovery_is_not_audited() -> None:
    assert classify("GET", "metadata") is None
    assert classify("GET", ".well-known/smart-configuration") is None


def test_search_query_includes_the_form_body_of_post_search() -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    req = FhirRequest("POST", "Patient/_search", [("_count", "5")], form, b"family=Sharma", access=SYSTEM)
    assert query_text(req) == "Patient/_search?_count=5&family=Sharma"


def test_outcome_codes() -> None:
    assert [outcome(s) for s in (200, 201, 304, 400, 401, 403, 404, 410, 500)] == \
        ["0", "0", "0", "4", "4", "4", "4", "4", "8"]


def test_a_read_event_is_valid_r4_and_names_the_patients_concerned() -> None:
    observation = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Patient/p2"}]}
    record = Record(interaction("search-type"), "R", 200, Actor("10.1.2.3", "client-1", "user-1", "alice",
                                                              "Practitioner/9", "doctor"),
                    resources=[observation, {"resourceType": "Patient", "id": "p3"}], query="Observation?code=x")
    event = audit_event(record)
    assert ResourceValidator().validate(event, "AuditEvent") == []
    patients = [e["what"]["reference"] for e in event["entity"] if e["role"]["code"] == "1"]
    assert sorted(patients) == ["Patient/p1", "Patient/p2", "Patient/p3"]
    (query,) = [e for e in event["entity"] if e["role"]["code"] == "24"]
    assert base64.b64decode(query["query"]) == b"Observation?code=x" and "what" not in query
    user, app = event["agent"]
    assert user["who"] == {"reference": "Practitioner/9"} and user["requestor"] and user["name"] == "alice"
    assert app["who"]["identifier"]["value"] == "client-1" and not app["requestor"]
    assert app["network"] == {"address": "10.1.2.3", "type": "2"}
    assert event["source"]["type"][0]["code"] == "4" and event["outcome"] == "0" and "outcomeDesc" not in event


def test_an_anonymous_failure() -> None:
    event = audit_event(Record(interaction("read"), "R", 401, Actor("10.0.0.9"), targets=["Observation/1"]))
    assert ResourceValidator().validate(event, "AuditEvent") == []
    assert event["agent"] == [{"who": {"display": "unauthenticated"}, "requestor": True,
                               "network": {"address": "10.0.0.9", "type": "2"}}]
    assert event["outcome"] == "4" and event["outcomeDesc"] == "HTTP 401"


def test_the_servers_own_writes_name_the_server() -> None:
    event = audit_event(Record(interaction("update"), "U", 200, SERVER, targets=["Subscription/1"]))
    assert ResourceValidator().validate(event, "AuditEvent") == []
    assert event["agent"][0]["who"] == {"display": "fhir-server"} and event["agent"][0]["requestor"] is True


_ACTORS = [Actor("10.1.2.3", "client-1", "user-1", "alice", "Practitioner/9", "doctor"),
           Actor("10.1.2.3", "backend-1"), Actor(user_id="user-2"), Actor("10.0.0.9"), SERVER]
_OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Patient/p1"}}


@pytest.mark.parametrize("code", ["read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                                  "history-system", "create", "search", "search-type", "search-system",
                                  "transaction", "batch", "operation"])
@pytest.mark.parametrize("status", [200, 201, 403, 500])
def test_every_shape_the_server_builds_is_valid_against_the_base_profile(code: str, status: int) -> None:
    """The recorder writes its AuditEvents ``trusted`` (no validation per write): this is the check instead."""
    validator = ResourceValidator()
    for actor in _ACTORS:
        record = Record(interaction(code), "R", status, actor, targets=["Observation/o1", "Patient/p1"],
                        resources=[_OBSERVATION], query="Observation?code=x" if code.startswith("search") else None)
        assert validator.validate(audit_event(record), "AuditEvent") == [], (code, actor)


@pytest.mark.parametrize("subtype", [coding(DCM, "110122"), own("token-issue", "Access token issued"),
                                     own("hl7-messages-reveal", "HL7 v2 messages revealed")])
def test_sign_in_token_and_admin_events_are_valid_against_the_base_profile(subtype: dict[str, str]) -> None:
    for actor in _ACTORS:
        event = audit_event(Record(subtype, "E", 401, actor, kind="110114", targets=["Patient/p1"]))
        assert ResourceValidator().validate(event, "AuditEvent") == [], (subtype, actor)

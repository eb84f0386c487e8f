"""Subscriptions Backport IG (STU 1.1) on R4: topics as Basic, filter criteria, notification Bundles,
event numbers, $status and $events, through the live server and a real webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from fhir_server.storage.models import OUTBOX
from fhir_server.subscriptions.spec import FILTER_CRITERIA, PAYLOAD_CONTENT, PROFILE
from tests.conftest import LiveServer, wait_until
from tests.integration.subscription_receiver import Receiver, start_receiver
from tests.integration.test_subscriptions import dispatcher, observation, status

X = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic."
TOPIC = "http://example.org/fhir/SubscriptionTopic/lab-result"
STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = start_receiver()
    yield receiver
    receiver.close()


def topic(api: LiveServer, url: str = TOPIC, current: str = "status=final") -> dict[str, Any]:
    trigger = [{"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/Observation"},
               *({"url": "supportedInteraction", "valueCode": c} for c in ("create", "update", "delete")),
               {"url": "queryCriteria", "extension": [{"url": "current", "valueString": current}]}]
    body = {"resourceType": "Basic",
            "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
            "extension": [{"url": X + "url", "valueUri": url}, {"url": X + "status", "valueCode": "active"},
                          {"url": X + "resourceTrigger", "extension": trigger}]}
    response = api.http.post("Basic", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def backport(api: LiveServer, endpoint: str, content: str = "full-resource", filters: tuple[str, ...] = (),
             channel_type: str = "rest-hook", topic_url: str = TOPIC, **channel: Any) -> Any:
    body = {"resourceType": "Subscription", "meta": {"profile": [PROFILE]}, "status": "requested",
            "reason": "lab results", "criteria": topic_url,
            **({"_criteria": {"extension": [{"url": FILTER_CRITERIA, "valueString": f} for f in filters]}}
               if filters else {}),
            "channel": {"type": channel_type, **({"endpoint": endpoint} if endpoint else {}),
                        "payload": "application/fhir+json",
                        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]}, **channel}}
    return api.http.post("Subscription", json=body)


def pending_heartbeats(api: LiveServer) -> int:
    with api.backend.engine.connect() as conn:
        return len(conn.execute(select(OUTBOX.c.pk).where(OUTBOX.c.topic == "subscription-heartbeat",
                                                          OUTBOX.c.status != "done")).all())


def params(bundle: dict[str, Any]) -> dict[str, Any]:
    first = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "Parameters" and first["meta"]["profile"] == [STATUS_PROFILE]
    out: dict[str, Any] = {}
    for p in first["parameter"]:
        value = p.get("part") or next(v for k, v in p.items() if k.startswith("value"))
        out.setdefault(p["name"], []).append(value)
    return out


def event_numbers(bundle: dict[str, Any]) -> list[int]:
    return [int(next(x["valueString"] for x in parts if x["name"] == "event-number"))
            for parts in params(bundle).get("notification-event", [])]


def test_notification_bundles_carry_monotonic_event_numbers_and_the_resource(api: LiveServer, hook: Receiver) -> None:
    topic(api)
    response = backport(api, hook.url, filters=("Observation?patient=Patient/X",))
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    d = dispatcher(api)
    d.run_once()
    [handshake] = hook.bodies()
    assert handshake["resourceType"] == "Bundle" and handshake["type"] == "history"
    hp = params(handshake)
    assert hp["type"] == ["handshake"] and hp["events-since-subscription-start"] == ["0"]
    assert hp["topic"] == [TOPIC] and hp["subscription"][0]["reference"].endswith(f"Subscription/{sid}")
    assert status(api, sid)["status"] == "active"

    made = [observation(api, "1-1", "X") for _ in range(3)]
    observation(api, "1-1", "Y")  # filtered out by the subscription's filter criteria
    prelim = {"resourceType": "Observation", "status": "preliminary", "code": {"text": "x"},
              "subject": {"reference": "Patient/X"}}
    api.http.post("Observation", json=prelim)  # fails the topic's own criteria (status=final)
    updated = observation(api, "1-1", "X", value=9.0, rid=made[0]["id"])
    assert api.http.delete(f"Observation/{made[1]['id']}").status_code in (200, 204)
    assert d.run_once() == 5
    notes = hook.bodies()[1:]
    assert [event_numbers(b) for b in notes] == [[1], [2], [3], [4], [5]]
    assert [params(b)["events-since-subscription-start"] for b in notes] == [["1"], ["2"], ["3"], ["4"], ["5"]]
    assert all(params(b)["type"] == ["event-notification"] for b in notes)
    first = notes[0]["entry"][1]
    assert first["resource"]["id"] == made[0]["id"] and first["request"] == {
        "method": "POST", "url": f"Observation/{made[0]['id']}"} and first["response"]["status"] == "201"
    assert notes[3]["entry"][1]["resource"]["meta"]["versionId"] == updated["meta"]["versionId"] == "2"
    assert notes[3]["entry"][1]["request"]["method"] == "PUT"
    deletion = notes[4]["entry"][1]
    assert deletion["request"]["method"] == "DELETE" and "resource" not in deletion
    # Topic-based, payload set or not: notification Bundles POSTed to the endpoint itself (the Backport IG),
    # never the plain R4 PUT of the resource below it (issue 21 item 6).
    assert {(r.method, r.path) for r in hook.received} == {("POST", "/hook")}

    st = api.http.get(f"Subscription/{sid}/$status").json()
    assert st["type"] == "searchset"
    sp = params(st)
    assert sp["type"] == ["query-status"] and sp["status"] == ["active"]
    assert sp["events-since-subscription-start"] == ["5"]
    ev = api.http.get(f"Subscription/{sid}/$events", params={"eventsSinceNumber": 2, "eventsUntilNumber": 3}).json()
    assert ev["type"] == "history" and params(ev)["type"] == ["query-event"] and event_numbers(ev) == [2, 3]
    assert [e["resource"]["id"] for e in ev["entry"][1:]] == [made[1]["id"], made[2]["id"]]


@pytest.mark.parametrize("content", ["id-only", "empty"])
def test_id_only_and_empty_payloads(api: LiveServer, hook: Receiver, content: str) -> None:
    topic(api)
    created = backport(api, hook.url, content=content)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    d = dispatcher(api)
    d.run_once()
    obs = observation(api, "1-1", "X")
    assert d.run_once() == 1
    note = hook.bodies()[-1]
    [parts] = params(note)["notification-event"]
    focus = [p for p in parts if p["name"] == "focus"]
    if content == "empty":
        assert len(note["entry"]) == 1 and focus == []
    else:
        [entry] = note["entry"][1:]
        assert "resource" not in entry and entry["fullUrl"].endswith(f"Observation/{obs['id']}")
        assert focus[0]["valueReference"]["reference"].endswith(f"Observation/{obs['id']}")
    assert status(api, sid)["status"] == "active"


def test_unknown_topics_and_filters_outside_the_topic_are_refused(api: LiveServer, hook: Receiver) -> None:
    topic(api)
    unknown = backport(api, hook.url, topic_url="http://example.org/fhir/SubscriptionTopic/nope")
    assert unknown.status_code == 422 and unknown.json()["issue"][0]["expression"] == ["Subscription.criteria"]
    other_type = backport(api, hook.url, filters=("Encounter?patient=Patient/X",))
    assert other_type.status_code == 422
    assert other_type.json()["issue"][0]["expression"] == ["Subscription.criteria.extension[0]"]
    bad_param = backport(api, hook.url, filters=("Observation?bogus=1",))
    assert bad_param.status_code == 422
    bad_content = backport(api, hook.url, content="everything")
    assert bad_content.status_code == 422


def test_a_topic_created_later_is_picked_up(api: LiveServer, hook: Receiver) -> None:
    """The per-process cache notices new topics and subscriptions (its generation token changes)."""
    topic(api, current="status=final")
    backport(api, hook.url)
    d = dispatcher(api)
    d.run_once()
    observation(api, "1-1", "X")
    assert d.run_once() == 1
    topic(api, url=TOPIC + "-2")
    backport(api, hook.url, topic_url=TOPIC + "-2", content="id-only")
    d.run_once()
    observation(api, "1-1", "X")
    assert d.run_once() == 2


def test_a_transaction_numbers_its_events_in_order_and_a_rolled_back_one_uses_no_numbers(
        api: LiveServer, hook: Receiver) -> None:
    assert api.http.put("Patient/X", json={"resourceType": "Patient", "id": "X"}).status_code == 201  # the subject
    topic(api)
    sid = backport(api, hook.url, content="id-only").json()["id"]
    d = dispatcher(api)
    d.run_once()

    def obs(status: str = "final") -> dict[str, Any]:
        return {"resource": {"resourceType": "Observation", "status": status, "code": {"text": "x"},
                             "subject": {"reference": "Patient/X"}},
                "request": {"method": "POST", "url": "Observation"}}

    failing = {"resourceType": "Bundle", "type": "transaction", "entry": [obs(), obs("not-a-status")]}
    assert api.http.post("", json=failing).status_code == 400
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [obs(), obs("preliminary"), obs(), obs()]}
    response = api.http.post("", json=bundle)
    assert response.status_code == 200, response.text
    ids = [e["response"]["location"].split("/")[1] for e in response.json()["entry"]]
    assert d.run_once() == 3
    notes = hook.bodies()[1:]
    assert sorted(event_numbers(b)[0] for b in notes) == [1, 2, 3]  # the failed Bundle consumed none
    by_number = {event_numbers(b)[0]: b["entry"][1]["fullUrl"].rsplit("/", 1)[-1] for b in notes}
    assert [by_number[i] for i in (1, 2, 3)] == [ids[0], ids[2], ids[3]]
    assert params(api.http.get(f"Subscription/{sid}/$status").json())["events-since-subscription-start"] == ["3"]


def test_a_quiet_rest_hook_subscription_gets_heartbeats(api: LiveServer, hook: Receiver) -> None:
    topic(api)
    ext = [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period",
            "valueUnsignedInt": 1}]
    sid = backport(api, hook.url, content="id-only", extension=ext).json()["id"]
    d = dispatcher(api)
    d.run_once()
    assert status(api, sid)["status"] == "active"

    def kinds() -> list[str]:
        d.run_once()
        return [params(b)["type"][0] for b in hook.bodies()]

    wait_until(lambda: kinds().count("heartbeat") >= 2, 20, "two heartbeats")  # the chain goes on
    beat = next(b for b in hook.bodies() if params(b)["type"] == ["heartbeat"])
    assert len(beat["entry"]) == 1 and params(beat)["events-since-subscription-start"] == ["0"]
    current = status(api, sid)
    assert api.http.put(f"Subscription/{sid}", json={**current, "status": "off"}).status_code == 200
    before = kinds().count("heartbeat")
    assert pending_heartbeats(api) <= 1  # at most the link already queued, which ends the chain when due
    wait_until(lambda: kinds() is not None and pending_heartbeats(api) == 0, 20, "the chain to end")
    assert kinds().count("heartbeat") == before


def test_previous_and_current_criteria_fire_on_the_transition_only(api: LiveServer, hook: Receiver) -> None:
    """The IG's encounter-complete topic: previous status:not=finished, current status=finished, requireBoth."""
    query = [{"url": "previous", "valueString": "status:not=finished"},
             {"url": "current", "valueString": "status=finished"},
             {"url": "resultForCreate", "valueCode": "test-fails"},
             {"url": "requireBoth", "valueBoolean": True}]
    trigger = [{"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/Encounter"},
               {"url": "supportedInteraction", "valueCode": "create"},
               {"url": "supportedInteraction", "valueCode": "update"},
               {"url": "queryCriteria", "extension": query}]
    url = "http://example.org/fhir/SubscriptionTopic/encounter-complete"
    basic = {"resourceType": "Basic",
             "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
             "extension": [{"url": X + "url", "valueUri": url},
                           {"url": "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic."
                                   "resourceTrigger", "extension": trigger}]}
    assert api.http.post("Basic", json=basic).status_code == 201
    assert backport(api, hook.url, content="id-only", topic_url=url).status_code == 201
    d = dispatcher(api)
    d.run_once()

    def encounter(status: str, rid: str | None = None) -> str:
        body = {"resourceType": "Encounter", "status": status,
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}}
        r = api.http.put(f"Encounter/{rid}", json={**body, "id": rid}) if rid else api.http.post("Encounter", json=body)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    a = encounter("in-progress")
    encounter("finished")  # created finished: resultForCreate test-fails, requireBoth
    encounter("finished", a)  # the transition: fires
    encounter("finished", a)  # finished again: previous fails
    encounter("in-progress", a)  # current fails
    assert d.run_once() == 1
    [note] = hook.bodies()[1:]
    assert note["entry"][1]["fullUrl"].endswith(f"Encounter/{a}") and note["entry"][1]["request"]["method"] == "PUT"

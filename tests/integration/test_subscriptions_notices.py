"""What a subscriber is shown (issue 21 items 5 and 7): absolute URLs in every rest-hook notification although
FHIR_BASE_URL is unset (the base the subscription was written through is kept with it); one Subscription
version per real state change, not per failed attempt; ``error`` with the count while notifications are
dead-lettered; ``$events`` in pages. The live server with a real webhook receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fhir_server.jobs import outbox_admin
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.subscriptions.operations import EVENTS_PAGE
from tests.conftest import LiveServer, wait_until
from tests.integration.subscription_receiver import Receiver, start_receiver
from tests.integration.test_subscriptions import dispatcher, observation, pending, status, subscription
from tests.integration.test_subscriptions_backport import backport, event_numbers, params, topic


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = start_receiver()
    yield receiver
    receiver.close()


def test_rest_hook_notifications_carry_absolute_urls_without_a_configured_base(api: LiveServer,
                                                                               hook: Receiver) -> None:
    assert not api.fhir.settings.base_url  # the case of the defect: nothing configured
    topic(api)
    response = backport(api, hook.url, filters=("Observation?patient=Patient/B",))
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    d = dispatcher(api)
    d.run_once()
    [handshake] = hook.bodies()
    assert params(handshake)["subscription"][0]["reference"] == f"{api.url}/Subscription/{sid}"
    assert status(api, sid)["status"] == "active"  # the server's own status write kept the client's base

    obs = observation(api, "1-1", "B")
    assert d.run_once() == 1
    note = hook.bodies()[-1]
    entry = note["entry"][1]
    assert entry["fullUrl"] == f"{api.url}/Observation/{obs['id']}"
    assert note["entry"][0]["fullUrl"].startswith("urn:uuid:")  # the status Parameters: no RESTful id
    p = params(note)
    assert p["subscription"][0]["reference"] == f"{api.url}/Subscription/{sid}"
    [focus] = [x["valueReference"]["reference"] for x in p["notification-event"][0] if x["name"] == "focus"]
    assert focus.startswith(f"{api.url}/Observation/{obs['id']}")


def _version(api: LiveServer, sid: str) -> int:
    return int(status(api, sid)["meta"]["versionId"])


def _drain(d: OutboxDispatcher, api: LiveServer) -> None:
    """Run the dispatcher until no notification is pending or in flight (dead ones stay)."""
    wait_until(lambda: d.run_once() >= 0 and not [r for r in pending(api) if r.status != "dead"], 30,
               "the notifications to be delivered or dead-lettered")


def test_a_failure_its_retry_mends_writes_no_subscription_version(api: LiveServer, hook: Receiver) -> None:
    sub = subscription(api, hook.url, "Observation?status=final", payload="application/fhir+json")
    d = dispatcher(api)
    d.run_once()
    assert status(api, sub["id"])["status"] == "active"
    before = _version(api, sub["id"])
    for _ in range(5):  # five transient failures, each mended by its first retry
        hook.status = 503
        observation(api, "1-1", "X")
        assert d.run_once() == 0
        hook.status = 200
        _drain(d, api)
    assert _version(api, sub["id"]) == before and status(api, sub["id"])["status"] == "active"
    assert len(hook.bodies()) == 10  # every failed try reached the receiver, and every event was delivered


def test_dead_letters_keep_the_subscription_in_error_with_their_count_until_delivered_or_discarded(
        api: LiveServer, hook: Receiver) -> None:
    sub = subscription(api, hook.url, "Observation?status=final", payload="application/fhir+json")
    d = dispatcher(api)
    d.run_once()
    active = _version(api, sub["id"])
    hook.status = 503
    observation(api, "1-1", "X")
    d.run_once()
    assert status(api, sub["id"])["status"] == "active"  # one failure: not yet a state change
    d.run_once()
    wait_until(lambda: d.run_once() >= 0 and status(api, sub["id"])["status"] == "error", 10, "error")
    failing = _version(api, sub["id"])
    assert failing == active + 1
    _drain(d, api)  # ten attempts: dead-lettered
    stored = status(api, sub["id"])
    assert stored["status"] == "error" and stored["error"].startswith("1 notification dead-lettered")
    assert _version(api, sub["id"]) == failing + 1  # the count is a change; the eight other failures were not

    hook.status = 200  # the endpoint is back: new events flow, but the dead one is still owed
    fresh = observation(api, "1-1", "Y")
    _drain(d, api)
    assert hook.bodies()[-1]["id"] == fresh["id"]
    assert status(api, sub["id"])["status"] == "error" and _version(api, sub["id"]) == failing + 1

    assert outbox_admin.retry(api.backend.engine, dead=True) == 1  # the operator retries it: delivered
    _drain(d, api)
    stored = status(api, sub["id"])
    assert stored["status"] == "active" and "error" not in stored and _version(api, sub["id"]) == failing + 2

    hook.status = 503  # another one dead-lettered, which the operator gives up on (`fhir-server outbox discard`)
    observation(api, "1-1", "Z")
    _drain(d, api)
    assert status(api, sub["id"])["error"].startswith("1 notification dead-lettered")
    assert outbox_admin.discard(api.backend.engine, dead=True) == 1
    _drain(d, api)  # the status refresh the discard queued
    assert status(api, sub["id"])["status"] == "active"


def test_events_past_one_page_carry_a_next_link(api: LiveServer) -> None:
    topic(api)
    response = backport(api, "", channel_type="websocket", content="id-only")
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    assert api.http.put("Patient/E", json={"resourceType": "Patient", "id": "E"}).status_code == 201
    made = EVENTS_PAGE + 150
    for start in range(0, made, 600):  # two transactions: each Observation is one event
        entries = [{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                 "subject": {"reference": "Patient/E"}},
                    "request": {"method": "POST", "url": "Observation"}} for _ in range(min(600, made - start))]
        got = api.http.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert got.status_code == 200, got.text[:500]
    first = api.http.get(f"Subscription/{sid}/$events").json()
    assert event_numbers(first) == list(range(1, EVENTS_PAGE + 1))
    [link] = [x for x in first["link"] if x["relation"] == "next"]
    assert link["url"].startswith(f"{api.url}/Subscription/{sid}/$events?eventsSinceNumber={EVENTS_PAGE + 1}")
    second = api.http.get(link["url"]).json()
    assert event_numbers(second) == list(range(EVENTS_PAGE + 1, made + 1))
    assert not [x for x in second.get("link", []) if x["relation"] == "next"]  # the last page says so by having none

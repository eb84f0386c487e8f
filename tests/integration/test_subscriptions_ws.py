"""The websocket channel /fhir/subscriptions/ws: R4 bind/ping and backport bind-with-token + Bundles."""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import connect

from tests.conftest import LiveServer
from tests.integration.test_subscriptions import observation
from tests.integration.test_subscriptions_backport import backport, event_numbers, params, topic


def ws_url(api: LiveServer) -> str:
    return api.url.replace("http://", "ws://") + "/subscriptions/ws"


def websocket_subscription(api: LiveServer) -> dict[str, Any]:
    body = {"resourceType": "Subscription", "status": "requested", "reason": "browser app",
            "criteria": "Observation?status=final", "channel": {"type": "websocket"}}
    response = api.http.post("Subscription", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_r4_bind_then_ping_per_matching_change(api: LiveServer) -> None:
    sub = websocket_subscription(api)
    assert sub["status"] == "active"  # nothing to handshake with: the socket binds later
    with connect(ws_url(api)) as ws:
        ws.send(f"bind {sub['id']}")
        assert ws.recv(timeout=10) == f"bound {sub['id']}"
        api.http.post("Observation", json={"resourceType": "Observation", "status": "preliminary",
                                           "code": {"text": "x"}})  # does not match
        observation(api, "1-1", "X")
        observation(api, "1-1", "X")
        assert [ws.recv(timeout=10), ws.recv(timeout=10)] == [f"ping {sub['id']}"] * 2
        events = api.http.get(f"Subscription/{sub['id']}/$events").json()
        assert event_numbers(events) == [1, 2]  # the non-matching change made no event


def test_unknown_subscriptions_and_tokens_are_not_bound(api: LiveServer) -> None:
    with connect(ws_url(api)) as ws:
        ws.send("bind no-such-subscription")
        assert ws.recv(timeout=10).startswith("error no-such-subscription")
        ws.send("bind-with-token forged")
        assert ws.recv(timeout=10).startswith("error forged")
        ws.send("hello")
        assert ws.recv(timeout=10).startswith("error")


def test_backport_bind_with_token_gets_handshake_and_notification_bundles(api: LiveServer) -> None:
    topic(api)
    response = backport(api, "", channel_type="websocket", filters=("Observation?patient=Patient/X",))
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    out = api.http.post(f"Subscription/{sid}/$get-ws-binding-token").json()
    got = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in out["parameter"]}
    assert got["subscription"] == f"Subscription/{sid}" and got["websocket-url"] == ws_url(api)
    with connect(got["websocket-url"]) as ws:
        ws.send(f"bind-with-token {got['token']}")
        handshake = json.loads(ws.recv(timeout=10))
        assert params(handshake)["type"] == ["handshake"]
        observation(api, "1-1", "Y")  # filtered out
        obs = observation(api, "1-1", "X")
        note = json.loads(ws.recv(timeout=10))
        assert params(note)["type"] == ["event-notification"] and event_numbers(note) == [1]
        assert note["entry"][1]["resource"]["id"] == obs["id"]


def test_backport_heartbeats_when_nothing_happens(api: LiveServer) -> None:
    topic(api)
    ext = [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period",
            "valueUnsignedInt": 1}]
    sid = backport(api, "", channel_type="websocket", extension=ext).json()["id"]
    token = api.http.post(f"Subscription/{sid}/$get-ws-binding-token").json()["parameter"][0]["valueString"]
    with connect(ws_url(api)) as ws:
        ws.send(f"bind-with-token {token}")
        assert params(json.loads(ws.recv(timeout=10)))["type"] == ["handshake"]
        assert params(json.loads(ws.recv(timeout=10)))["type"] == ["heartbeat"]

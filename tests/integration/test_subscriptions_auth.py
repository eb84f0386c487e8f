"""Subscriptions with auth on: the author's token limits what they are told; the websocket `bind <id>`
needs a bearer token that may read the subscription; $get-ws-binding-token obeys access."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.subscriptions import install_delivery
from tests.conftest import Backend
from tests.integration.subscription_receiver import Receiver, start_receiver
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    for server in smart_server(backend):
        # referential integrity: the Observations' subject must exist
        server.as_admin("PUT", "Patient/P1", content=b'{"resourceType": "Patient", "id": "P1"}', headers=JSON)
        yield server


@pytest.fixture
def made(smart: Smart) -> Iterator[list[str]]:
    """Subscriptions a test made, deleted afterwards (this module's server does not empty the store)."""
    ids: list[str] = []
    yield ids
    for sid in ids:
        smart.as_admin("DELETE", f"Subscription/{sid}")


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = start_receiver()
    yield receiver
    receiver.close()


def _post(smart: Smart, token: str, resource: dict[str, Any]) -> Any:
    return smart.fhir("POST", resource["resourceType"], token, content=orjson.dumps(resource), headers=JSON)


def _obs(category: str, patient: str = "P1") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
            "subject": {"reference": f"Patient/{patient}"}}


def test_the_authors_token_limits_the_notifications(smart: Smart, hook: Receiver, made: list[str]) -> None:
    scope = f"system/Subscription.cruds system/Observation.rs?category={CATEGORY}|laboratory"
    token = smart.system_token(scope)
    sub = _post(smart, token, {"resourceType": "Subscription", "status": "requested", "reason": "labs only",
                               "criteria": "Observation?status=final",
                               "channel": {"type": "rest-hook", "endpoint": hook.url,
                                           "payload": "application/fhir+json"}})
    assert sub.status_code == 201, sub.text
    made.append(sub.json()["id"])
    d = OutboxDispatcher(smart.backend.engine, backoff_base=0.001)
    install_delivery(smart.auth.fhir, d, timeout=5)
    d.run_once()
    admin = smart.system_token("system/*.cruds")
    vital = _post(smart, admin, _obs("vital-signs")).json()
    lab = _post(smart, admin, _obs("laboratory")).json()
    d.run_once()
    assert [b["id"] for b in hook.bodies()] == [lab["id"]]  # the vital sign is beyond the author's token
    assert vital["id"] != lab["id"]


def test_websocket_bind_needs_a_token_that_may_read_the_subscription(smart: Smart, made: list[str]) -> None:
    admin = smart.system_token("system/*.cruds")
    sub = _post(smart, admin, {"resourceType": "Subscription", "status": "requested", "reason": "browser",
                               "criteria": "Observation?status=final", "channel": {"type": "websocket"}}).json()
    made.append(sub["id"])
    url = smart.base.replace("http://", "ws://") + "/subscriptions/ws"
    with connect(url) as ws:
        ws.send(f"bind {sub['id']}")
        assert ws.recv(timeout=10) == f"error {sub['id']} unauthorized"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    blind = smart.system_token("system/Observation.rs")
    with connect(url, additional_headers={"Authorization": f"Bearer {blind}"}) as ws:
        ws.send(f"bind {sub['id']}")
        assert ws.recv(timeout=10) == f"error {sub['id']} not bound"  # a valid token that cannot read it
    reader = smart.system_token("system/Subscription.rs system/Observation.rs")
    with connect(url, additional_headers={"Authorization": f"Bearer {reader}"}) as ws:
        ws.send(f"bind {sub['id']}")
        assert ws.recv(timeout=10) == f"bound {sub['id']}"
        _post(smart, admin, _obs("laboratory"))
        assert ws.recv(timeout=10) == f"ping {sub['id']}"
    # Reading the subscription is not reading what it reports: a token that may read Subscriptions and
    # Patients, bound to an Observation subscription and a Patient one on one socket, hears only of Patients.
    # Each poll goes through the bindings in order, so the Observation (written first) would come first.
    patients = _post(smart, admin, {"resourceType": "Subscription", "status": "requested", "reason": "admissions",
                                    "criteria": "Patient?", "channel": {"type": "websocket"}}).json()
    made.append(patients["id"])
    narrow = smart.system_token("system/Subscription.rs system/Patient.rs")
    with connect(url, additional_headers={"Authorization": f"Bearer {narrow}"}) as ws:
        for sid in (sub["id"], patients["id"]):
            ws.send(f"bind {sid}")
            assert ws.recv(timeout=10) == f"bound {sid}"
        _post(smart, admin, _obs("laboratory"))
        _post(smart, admin, {"resourceType": "Patient"})
        assert ws.recv(timeout=10) == f"ping {patients['id']}"
        _post(smart, admin, {"resourceType": "Patient"})  # any ping of the Observation would come before this one
        assert ws.recv(timeout=10) == f"ping {patients['id']}"
    assert smart.fhir("POST", f"Subscription/{sub['id']}/$get-ws-binding-token", blind).status_code == 403
    assert smart.fhir("POST", f"Subscription/{sub['id']}/$get-ws-binding-token").status_code == 401

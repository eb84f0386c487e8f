"""Two hospitals on one server as if on two (issue 13): their own data, URLs, tokens, limits and status."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import orjson
import pytest
from pydantic import SecretStr

from fhir_server.auth.store import UserLimitReached
from fhir_server.tenancy.model import TenantStatus
from tests.conftest import Backend, wait_until
from tests.integration.tenancy_support import JSON, Network, network

A, B = "iso-a", "iso-b"
PLATFORM = "platform-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def net(backend: Backend) -> Iterator[Network]:
    yield from network(backend, (A, B), platform_token=SecretStr(PLATFORM))


def test_each_hospital_has_its_own_data_urls_and_tokens(net: Network) -> None:
    token = {code: net.admin(code) for code in ("default", A, B)}
    mark = f"tenant{uuid.uuid4().hex[:8]}"
    made = net.smart[A].fhir("POST", "Patient", token[A], headers=JSON, content=orjson.dumps(
        {"resourceType": "Patient", "name": [{"family": mark}]}))
    assert made.status_code == 201, made.text
    pid = made.json()["id"]
    assert made.headers["Location"].startswith(f"{net.host}/fhir/{A}/Patient/{pid}/_history/1")
    # A's token is A's alone: B's and the default's URLs refuse it (another issuer, another key).
    for other in (B, "default"):
        r = net.smart[other].fhir("GET", f"Patient/{pid}", token[A])
        assert r.status_code == 401, (other, r.text)
        assert pid not in r.text and mark not in r.text
    # B's own token sees nothing of A: not the resource, not a count, not a version.
    for path in (f"Patient/{pid}", f"Patient/{pid}/_history", f"Patient?family={mark}", "Patient?_summary=count",
                 f"Patient?_id={pid}&_total=accurate", "_history"):
        r = net.smart[B].fhir("GET", path, token[B])
        for said_only_by_caller in (mark, pid):  # at most what the caller itself sent comes back
            assert said_only_by_caller not in r.text or said_only_by_caller in path, (path, r.text[:300])
        if r.status_code == 200 and r.json().get("resourceType") == "Bundle":
            assert not [e for e in r.json().get("entry", []) if e.get("resource", {}).get("id") == pid], path
            assert r.json().get("total", 0) == 0 or path in ("Patient?_summary=count", "_history"), path
        else:
            assert r.status_code == 404, (path, r.status_code)
    count = net.smart[B].fhir("GET", f"Patient?family={mark}&_summary=count", token[B]).json()
    assert count["total"] == 0
    # In A, everything carries A's base: fullUrls, links, the CapabilityStatement.
    found = net.smart[A].fhir("GET", f"Patient?family={mark}", token[A]).json()
    assert found["total"] == 1
    assert found["entry"][0]["fullUrl"] == f"{net.host}/fhir/{A}/Patient/{pid}"
    assert all(link["url"].startswith(f"{net.host}/fhir/{A}/") for link in found["link"])
    # A transaction in A writes in A only.
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:" + str(uuid.uuid4()), "request": {"method": "POST", "url": "Observation"},
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": mark},
                     "subject": {"reference": f"Patient/{pid}"}}}]}
    done = net.smart[A].fhir("POST", "", token[A], headers=JSON, content=orjson.dumps(bundle))
    assert done.status_code == 200, done.text
    assert done.json()["entry"][0]["response"]["location"].startswith("Observation/")
    assert net.smart[B].fhir("GET", f"Observation?code:text={mark}", token[B]).json()["total"] == 0
    assert net.smart["default"].fhir("GET", f"Observation?code:text={mark}", token["default"]).json()["total"] == 0
    # The same reference posted in B: A's Patient does not exist there (referential integrity, B's data).
    refused = net.smart[B].fhir("POST", "Observation", token[B], headers=JSON, content=orjson.dumps(
        bundle["entry"][0]["resource"]))
    assert refused.status_code == 422, refused.text


def test_discovery_and_capability_name_the_hospital(net: Network) -> None:
    smart_conf = net.http.get(f"{net.host}/fhir/{A}/.well-known/smart-configuration").json()
    assert smart_conf["token_endpoint"] == f"{net.host}/t/{A}/auth/token"
    assert smart_conf["authorization_endpoint"] == f"{net.host}/t/{A}/auth/authorize"
    assert smart_conf["issuer"] == f"{net.host}/fhir/{A}"
    statement = net.http.get(f"{net.host}/fhir/{A}/metadata", headers={"Accept": "application/fhir+json"}).json()
    assert statement["implementation"]["url"] == f"{net.host}/fhir/{A}"
    oauth = statement["rest"][0]["security"]["extension"][0]["extension"]
    assert {"url": "token", "valueUri": f"{net.host}/t/{A}/auth/token"} in oauth
    jwks_a = net.http.get(f"{net.host}/t/{A}/auth/jwks").json()["keys"]
    jwks_b = net.http.get(f"{net.host}/t/{B}/auth/jwks").json()["keys"]
    assert jwks_a and jwks_b and not {k["kid"] for k in jwks_a} & {k["kid"] for k in jwks_b}
    unknown = net.http.get(f"{net.host}/fhir/no-such-hospital/Patient")
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"


def test_suspension_refuses_every_request_and_token_at_once(net: Network) -> None:
    token = net.admin(A)
    client = net.smart[A].client(["client_credentials"], "system/*.rs")
    assert net.smart[A].fhir("GET", "Patient", token).status_code == 200  # the server has seen A active
    # Suspended by another process (net.store is not the server's): on PostgreSQL the server's view of A's
    # status may be a second old, and A's own transactions refuse it (tenancy/engines.py); on SQLite the
    # status is read per request.
    net.store.set_status(A, TenantStatus.SUSPENDED)
    try:
        r = net.smart[A].fhir("GET", "Patient", token)
        assert r.status_code == 403 and "suspended" in r.json()["issue"][0]["diagnostics"], r.text
        r = net.smart[A].fhir("POST", "Patient", token, headers=JSON, content=b'{"resourceType": "Patient"}')
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome", r.text
        issued = net.http.post(net.smart[A].token_url, data={"grant_type": "client_credentials"},
                               auth=(client["client_id"], client["client_secret"]))
        assert issued.status_code == 403, issued.text
        assert net.smart[B].fhir("GET", "Patient", net.admin(B)).status_code == 200  # the others go on
    finally:
        net.store.set_status(A, TenantStatus.ACTIVE)
    # Active again: within a second in a process that did not make the change.
    wait_until(lambda: net.smart[A].fhir("GET", "Patient", token).status_code == 200, 10, "A active again")


def test_limits_refuse_the_patient_and_user_past_them(net: Network) -> None:
    token = net.admin(B)
    total = net.smart[B].fhir("GET", "Patient?_summary=count", token).json()["total"]
    net.store.set_limits(B, max_users=None, max_patients=total + 1)
    try:
        net.create(B, token, {"resourceType": "Patient", "name": [{"family": "Within"}]})
        over = net.smart[B].fhir("POST", "Patient", token, headers=JSON, content=orjson.dumps(
            {"resourceType": "Patient", "name": [{"family": "Beyond"}]}))
        assert over.status_code == 422 and "max-patients" in over.text, over.text
        assert net.smart[B].fhir("GET", "Patient?family=Beyond", token).json()["total"] == 0  # nothing half-written
        assert net.smart[A].fhir("GET", "Patient", net.admin(A)).status_code == 200
        net.create(A, net.admin(A), {"resourceType": "Patient"})  # A has no such limit
        users = net.smart[B].store.count_users()
        net.store.set_limits(B, max_users=users, max_patients=None)
        with pytest.raises(UserLimitReached, match="max-users"):
            net.smart[B].user("nurse")
    finally:
        net.store.set_limits(B, max_users=None, max_patients=None)


def test_the_platform_administers_hospitals_without_their_clinical_data(net: Network) -> None:
    platform = {"Authorization": f"Bearer {PLATFORM}"}
    url = f"{net.host}/platform/tenants"
    assert net.http.get(url).status_code == 401
    assert net.http.get(url, headers={"Authorization": f"Bearer {net.admin(A)}"}).status_code == 401
    assert net.http.get(f"{net.host}/t/{A}/platform/tenants", headers=platform).status_code == 404
    listed = net.http.get(url, headers=platform)
    assert listed.status_code == 200 and {A, B} <= {t["code"] for t in listed.json()}
    family = f"Secret{uuid.uuid4().hex[:8]}"
    net.create(A, net.admin(A), {"resourceType": "Patient", "name": [{"family": family}]})
    shown = net.http.get(f"{url}/{A}", headers=platform)
    assert shown.status_code == 200, shown.text
    figures = shown.json()
    assert figures["patients"] >= 1 and figures["resources"] >= figures["patients"] and figures["storageBytes"] > 0
    assert family not in shown.text  # counts, never content
    code = f"new-{uuid.uuid4().hex[:8]}"
    made = net.http.post(url, headers=platform, json={"code": code, "name": "New Hospital", "maxPatients": 5})
    assert made.status_code == 201 and made.json()["status"] == "ACTIVE", made.text
    assert net.http.post(url, headers=platform, json={"code": "Bad Code", "name": "x"}).status_code == 400
    assert net.http.post(url, headers=platform, json={"code": code, "name": "again"}).status_code == 409
    limits = net.http.put(f"{url}/{code}/limits", headers=platform, json={"maxUsers": 3, "maxPatients": None})
    assert limits.status_code == 200 and limits.json()["maxUsers"] == 3
    assert net.http.put(f"{url}/{code}/limits", headers=platform, json={"maxUsers": -1}).status_code == 422
    token = net.admin(A)
    assert net.http.post(f"{url}/{A}/suspend", headers=platform).status_code == 200
    try:
        assert net.smart[A].fhir("GET", "Patient", token).status_code == 403
    finally:
        assert net.http.post(f"{url}/{A}/activate", headers=platform).status_code == 200
    assert net.smart[A].fhir("GET", "Patient", token).status_code == 200
    admin = net.smart[A].user("admin")
    reset = net.http.post(f"{url}/{A}/users/{admin}/password", headers=platform)
    assert reset.status_code == 200, reset.text
    assert net.smart[A].store.login(admin, reset.json()["password"]) is not None
    assert net.http.post(f"{url}/{A}/users/nobody-here/password", headers=platform).status_code == 404


def test_every_hospital_s_outbox_is_delivered_by_the_one_set_of_lanes(net: Network) -> None:
    """A hospital's dispatcher has no threads of its own for delivery: the process's lanes (the default's)
    deliver its rows, so the lane threads do not grow with the number of hospitals."""
    import threading
    from typing import Any

    from fhir_server.storage.access import as_system

    tenants = net.app.state.tenants
    stack = tenants.stack(A)
    assert stack.outbox.pool is tenants.default.outbox.pool
    ran: list[str] = []
    stack.outbox.register("tenancy-lane-test", lambda key, _payload: ran.append(threading.current_thread().name))

    def work(repo: Any) -> None:
        for n in range(3):
            repo.enqueue("tenancy-lane-test", f"lane/{n}", {"n": n})

    stack.fhir.uow.run(work, write=True, access=as_system("test: rows in hospital A's outbox"))
    stack.outbox.start(0.05)
    try:
        wait_until(lambda: len(ran) == 3, 20, "hospital A's rows")
    finally:
        stack.outbox.stop()
    assert all(name.startswith("outbox-lane") for name in ran)

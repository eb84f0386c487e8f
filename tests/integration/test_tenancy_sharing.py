"""A patient shared by one hospital with another (issue 13 item 6): proposed, accepted or rejected, used by the
other hospital's clinicians with their own tokens at the sharing hospital's URL, for exactly as long and as
widely as consented, and audited in both."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from fhir_server.errors import TRANSIENT, FhirError
from fhir_server.hooks import HookPoint
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.tenancy.shares import SHARE_TOPIC
from tests.conftest import Backend, wait_until
from tests.integration.tenancy_support import JSON, Network, network
from tests.integration.test_auth_access import _user_token

A, B, C = "sh-a", "sh-b", "sh-c"
SCOPE = "user/*.cruds"


@pytest.fixture(scope="module")
def net(backend: Backend) -> Iterator[Network]:
    yield from network(backend, (A, B, C), audit_enabled=True)


@pytest.fixture(scope="module")
def people(net: Network) -> dict[str, str]:
    """Tokens of users of each hospital (B's doctor is a Practitioner there); few: each costs a sign-in."""
    def user(code: str, role: str, fhir_user: str | None = None) -> str:
        return str(_user_token(net.smart[code], role, SCOPE, fhir_user=fhir_user)["access_token"])
    return {"a_doctor": user(A, "doctor"), "b_admin": user(B, "admin"),
            "b_doctor": user(B, "doctor", "Practitioner/dr-b"), "b_nurse": user(B, "nurse"),
            "b_reception": user(B, "receptionist"), "c_doctor": user(C, "doctor"),
            # backend tokens that may do anything in their hospital (seeding, checking, listing)
            A: net.admin(A), B: net.admin(B), C: net.admin(C)}


def _patient(net: Network, admin: str) -> tuple[str, str]:
    """A new patient of A with one Observation: (patient id, observation id)."""
    pid = net.create(A, admin, {"resourceType": "Patient", "name": [{"family": f"S{uuid.uuid4().hex[:6]}"}]})["id"]
    oid = net.create(A, admin, {"resourceType": "Observation", "status": "final", "code": {"text": "hb"},
                                "subject": {"reference": f"Patient/{pid}"}})["id"]
    return pid, oid


def _share(net: Network, token: str, pid: str, mode: str = "read", seconds: int = 86400,
           target: str = B) -> dict[str, Any]:
    expires = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": target}, {"name": "mode", "valueCode": mode},
        {"name": "expires", "valueDateTime": expires}, {"name": "reason", "valueString": "referral"}]}
    r = net.smart[A].fhir("POST", f"Patient/{pid}/$share", token, headers=JSON, content=orjson.dumps(params))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _op(net: Network, code: str, token: str, path: str) -> Any:
    return net.smart[code].fhir("POST", path, token, headers=JSON,
                                content=orjson.dumps({"resourceType": "Parameters"}))


def _ids(r: Any) -> set[str]:
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode") != "outcome"}


def _shares(net: Network, code: str, token: str, query: str) -> dict[str, dict[str, str]]:
    r = net.smart[code].fhir("GET", f"$shares?{query}", token)
    assert r.status_code == 200, r.text
    out = {}
    for p in r.json().get("parameter", []):
        fields = {x["name"]: x["valueString"] for x in p["part"]}
        out[fields["id"]] = fields
    return out


def test_accepted_read_only_share_shows_only_that_patient_until_revoked(net: Network, people: dict[str, str]) -> None:
    x, x_obs = _patient(net, people[A])
    y, y_obs = _patient(net, people[A])
    made = _share(net, people["a_doctor"], x)
    sid = made["id"]
    assert made["status"] == "proposed" and made["patient"]["reference"] == f"Patient/{x}"
    assert made["provision"]["actor"][0]["reference"]["identifier"]["value"] == B
    theirs = net.smart[B].fhir("GET", f"Consent/{sid}", people[B]).json()
    assert theirs["status"] == "proposed" and theirs["patient"]["reference"] == f"{net.host}/fhir/{A}/Patient/{x}"
    doctor = people["b_doctor"]
    assert net.smart[A].fhir("GET", f"Patient/{x}", doctor).status_code == 401  # proposed is not yet consented
    # Only B's admin answers; a doctor of B, or A, cannot.
    assert _op(net, B, doctor, f"Consent/{sid}/$accept").status_code == 403
    assert _op(net, A, people["a_doctor"], f"Consent/{sid}/$accept").status_code in (403, 404)
    accepted = _op(net, B, people["b_admin"], f"Consent/{sid}/$accept")
    assert accepted.status_code == 200 and accepted.json()["status"] == "active", accepted.text
    assert net.smart[A].fhir("GET", f"Consent/{sid}", people[A]).json()["status"] == "active"
    assert sid in _shares(net, A, people[A], "direction=sent&status=active")
    assert _shares(net, B, people["b_admin"], "direction=received&status=active")[sid]["patient"] == x
    assert _shares(net, C, people[C], "direction=received") == {}
    # B's clinicians: X's compartment in A, read-only; nothing else of A.
    for token in (doctor, people["b_nurse"]):
        assert net.smart[A].fhir("GET", f"Patient/{x}", token).status_code == 200
        assert net.smart[A].fhir("GET", f"Observation/{x_obs}", token).status_code == 200
    assert net.smart[A].fhir("GET", f"Patient/{y}", doctor).status_code in (403, 404)
    assert net.smart[A].fhir("GET", f"Observation/{y_obs}", doctor).status_code in (403, 404)
    assert _ids(net.smart[A].fhir("GET", "Observation", doctor)) == {x_obs}
    assert _ids(net.smart[A].fhir("GET", "Patient", doctor)) == {x}
    assert _ids(net.smart[A].fhir("GET", f"Observation?patient={y}", doctor)) == set()
    write = net.smart[A].fhir("POST", "Observation", doctor, headers=JSON, content=orjson.dumps(
        {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
         "subject": {"reference": f"Patient/{x}"}}))
    assert write.status_code == 403, write.text
    # Not for B's front desk, B's backends, nor a third hospital.
    assert net.smart[A].fhir("GET", f"Patient/{x}", people["b_reception"]).status_code == 403
    assert net.smart[A].fhir("GET", f"Patient/{x}", people[B]).status_code in (401, 403)
    assert net.smart[A].fhir("GET", f"Patient/{x}", people["c_doctor"]).status_code == 401
    # Audited in both: A's trail names B's practitioner, B's names its Consent of the share.
    b_user = f"{net.host}/fhir/{B}/Practitioner/dr-b"

    def audited(code: str, query: str) -> bool:
        found = net.smart[code].fhir("GET", f"AuditEvent?{query}&_count=500", people[code]).json()
        return any(a.get("who", {}).get("reference") == b_user for e in found.get("entry", [])
                   for a in e["resource"].get("agent", []))
    wait_until(lambda: audited(A, f"entity=Patient/{x}"), 20, "A's AuditEvent of B's read")
    wait_until(lambda: audited(B, f"entity=Consent/{sid}"), 20, "B's AuditEvent of its user's use of the share")
    # Revoked by A: refused from the very next request.
    assert _op(net, A, people[A], f"Consent/{sid}/$revoke").status_code == 403  # A's backend: no role
    revoked = _op(net, A, people["a_doctor"], f"Consent/{sid}/$revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "inactive", revoked.text
    assert net.smart[A].fhir("GET", f"Patient/{x}", doctor).status_code == 401
    assert net.smart[B].fhir("GET", f"Consent/{sid}", people[B]).json()["status"] == "inactive"
    assert _shares(net, B, people["b_admin"], "direction=received")[sid]["status"] == "REVOKED"


def test_read_write_share_lets_b_add_to_x_in_a(net: Network, people: dict[str, str]) -> None:
    x, _ = _patient(net, people[A])
    y, _ = _patient(net, people[A])
    sid = _share(net, people["a_doctor"], x, "read-write")["id"]
    assert "correct" in str(net.smart[B].fhir("GET", f"Consent/{sid}", people[B]).json()["provision"]["action"])
    assert _op(net, B, people["b_admin"], f"Consent/{sid}/$accept").status_code == 200

    def observe(pid: str) -> Any:
        return net.smart[A].fhir("POST", "Observation", people["b_doctor"], headers=JSON, content=orjson.dumps(
            {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
             "subject": {"reference": f"Patient/{pid}"}}))
    made = observe(x)
    assert made.status_code == 201, made.text
    assert net.smart[A].fhir("GET", f"Observation/{made.json()['id']}", people[A]).status_code == 200
    assert net.smart[B].fhir("GET", f"Observation/{made.json()['id']}", people[B]).status_code == 404
    assert observe(y).status_code == 403  # another patient of A: not through this share
    assert _op(net, A, people["a_doctor"], f"Consent/{sid}/$revoke").status_code == 200
    assert observe(x).status_code == 401


def test_rejected_share_gives_nothing(net: Network, people: dict[str, str]) -> None:
    x, _ = _patient(net, people[A])
    sid = _share(net, people["a_doctor"], x)["id"]
    rejected = _op(net, B, people["b_admin"], f"Consent/{sid}/$reject")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert net.smart[A].fhir("GET", f"Consent/{sid}", people[A]).json()["status"] == "rejected"
    assert _op(net, B, people["b_admin"], f"Consent/{sid}/$accept").status_code == 409
    assert net.smart[A].fhir("GET", f"Patient/{x}", people["b_doctor"]).status_code == 401
    assert _shares(net, A, people[A], "direction=sent&status=rejected")[sid]["status"] == "REJECTED"


def test_share_ends_at_its_expiry(net: Network, people: dict[str, str]) -> None:
    x, _ = _patient(net, people[A])
    sid = _share(net, people["a_doctor"], x, seconds=4)["id"]
    assert _op(net, B, people["b_admin"], f"Consent/{sid}/$accept").status_code == 200
    assert net.smart[A].fhir("GET", f"Patient/{x}", people["b_doctor"]).status_code == 200
    wait_until(lambda: net.smart[A].fhir("GET", f"Patient/{x}", people["b_doctor"]).status_code == 401, 15,
               "the expired share to be refused")
    assert _shares(net, A, people[A], "direction=sent")[sid]["status"] == "EXPIRED"


def test_share_is_asked_for_properly(net: Network, people: dict[str, str]) -> None:
    x, _ = _patient(net, people[A])
    params: list[dict[str, Any]] = [{"name": "target", "valueString": B}, {"name": "reason", "valueString": "r"}]

    def ask(token: str, extra: list[dict[str, Any]]) -> int:
        body = {"resourceType": "Parameters", "parameter": params + extra}
        return net.smart[A].fhir("POST", f"Patient/{x}/$share", token, headers=JSON,
                                 content=orjson.dumps(body)).status_code
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert ask(people["b_nurse"], [{"name": "expires", "valueDateTime": later}]) in (401, 403)
    assert ask(people[A], [{"name": "expires", "valueDateTime": later}]) == 403  # a backend has no role
    assert ask(people["a_doctor"], []) == 400  # no expiry
    assert ask(people["a_doctor"], [{"name": "expires", "valueDateTime": "2020-01-01T00:00:00Z"}]) == 400
    too_far = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    assert ask(people["a_doctor"], [{"name": "expires", "valueDateTime": too_far}]) == 400
    assert net.smart[A].fhir("POST", f"Patient/{x}/$share", people["a_doctor"], headers=JSON, content=orjson.dumps(
        {"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "nowhere"},
                                                      {"name": "expires", "valueDateTime": later},
                                                      {"name": "reason", "valueString": "r"}]})).status_code == 400


def test_consents_that_failed_to_be_written_catch_up_from_the_outbox(net: Network, people: dict[str, str]) -> None:
    """The share's row commits first, with its catch-up in the outbox: a Consent that could not be written (A's
    in the request itself, then B's once more in the catch-up) follows, and the share works as any other."""
    failures = {A: 1, B: 2}

    def failing(code: str) -> Any:
        def hook(event: Any, _repo: Any) -> None:
            if event.resource_type == "Consent" and failures[code] > 0:
                failures[code] -= 1
                raise FhirError(503, TRANSIENT, f"{code}'s database is away")
        return hook

    for code in (A, B):
        net.app.state.tenants.stack(code).fhir.hooks.register(HookPoint.BEFORE_COMMIT, failing(code))
    x, _ = _patient(net, people[A])
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": B}, {"name": "expires", "valueDateTime": expires},
        {"name": "reason", "valueString": "referral"}]}
    r = net.smart[A].fhir("POST", f"Patient/{x}/$share", people["a_doctor"], headers=JSON, content=orjson.dumps(params))
    assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome", r.text
    [sid] = [k for k, v in _shares(net, A, people[A], "direction=sent").items() if v["patient"] == x]

    def consent_status(code: str) -> str | None:
        found = net.smart[code].fhir("GET", f"Consent/{sid}", people[code])
        return str(found.json()["status"]) if found.status_code == 200 else None

    # The default tenant's outbox (tests run no dispatcher of their own): only the shares' topic.
    default = net.app.state.tenants.default
    catch_up = OutboxDispatcher(default.fhir.engine)
    catch_up.register(SHARE_TOPIC, default.outbox.handlers[SHARE_TOPIC])

    def caught_up() -> bool:
        for item in catch_up.claim():
            catch_up.deliver(item)
        return consent_status(A) == "proposed" and consent_status(B) == "proposed"

    wait_until(caught_up, 60, "the catch-up")
    assert failures == {A: 0, B: 0}
    accepted = _op(net, B, people["b_admin"], f"Consent/{sid}/$accept")
    assert accepted.status_code == 200 and accepted.json()["status"] == "active", accepted.text
    assert consent_status(A) == "active"
    assert net.smart[A].fhir("GET", f"Patient/{x}", people["b_doctor"]).status_code == 200
    history = net.smart[B].fhir("GET", f"Consent/{sid}/_history", people[B]).json()
    assert history["total"] == 2  # proposed once, active once: a catch-up after a success writes nothing

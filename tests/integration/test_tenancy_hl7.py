"""HL7 v2 for many hospitals on one listener (issue 13 item 4): routed by MSH-6 (and MSH-5) to each hospital's
own store and resources; an unrouted facility or a suspended hospital gets AR naming MSH-6, kept for replay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from fhir_server.tenancy.model import TenantStatus
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.routing import RouteTable, receiver_of
from interfaces.mllp.store import REJECTED, MessageStore
from tests.conftest import Backend, wait_until
from tests.integration.tenancy_support import Network, network
from tests.integration.test_mllp import Running, exchange, segment

A, B = "v2-a", "v2-b"


@pytest.fixture(scope="module")
def net(backend: Backend) -> Iterator[Network]:
    yield from network(backend, (A, B))


@pytest.fixture(scope="module")
def routed(net: Network) -> Iterator[Running]:
    table = RouteTable(net.app.state.fhir.engine)
    table.add(A, "LAB-A")
    table.add(B, "LAB-B")
    table.add(B, "LAB-A", "RADIOLOGY")  # MSH-5 narrows: LAB-A's radiology system belongs to B
    tenants = net.app.state.tenants
    running = Running(MllpListener(tenants.default.fhir, host="127.0.0.1", port=0, tenants=tenants))
    yield running
    running.stop()
    for facility, application in (("LAB-A", ""), ("LAB-B", ""), ("LAB-A", "RADIOLOGY")):
        table.remove(facility, application)


def adt(facility: str, family: str, application: str = "REC APP") -> bytes:
    control = uuid.uuid4().hex[:12]
    return (f"MSH|^~\\&|SENDER|SENDFAC|{application}|{facility}^1.2.3^ISO|20250101101500||ADT^A01^ADT_A01|{control}|P|"
            f"2.5.1\rEVN||20250101101500\rPID|1||{control}^^^HOSP^MR||{family}^Asha||19800101|F\r"
            "PV1|1|I|W1^1^1\r").encode()


def families(net: Network, code: str, family: str) -> int:
    r = net.smart[code].fhir("GET", f"Patient?family={family}&_summary=count", net.admin(code))
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def test_receiver_is_read_from_msh_without_parsing() -> None:
    assert receiver_of(adt("LAB-A", "X", "APP")) == ("APP", "LAB-A")
    assert receiver_of(b"PID|1") is None


def test_messages_go_to_the_hospital_their_msh6_names(net: Network, routed: Running) -> None:
    fam = {code: f"Routed{code.replace('-', '')}{uuid.uuid4().hex[:6]}" for code in (A, B)}
    acks = exchange(routed.port, adt("LAB-A", fam[A]), adt("LAB-B", fam[B]), adt("LAB-A", fam[B], "RADIOLOGY"))
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA", "AA"], acks
    assert families(net, A, fam[A]) == 1 and families(net, B, fam[A]) == 0
    assert families(net, B, fam[B]) == 2 and families(net, A, fam[B]) == 0
    assert families(net, "default", fam[A]) == 0 and families(net, "default", fam[B]) == 0


def test_an_unrouted_facility_is_refused_naming_msh6_and_kept(net: Network, routed: Running) -> None:
    family = f"Unrouted{uuid.uuid4().hex[:6]}"
    [ack] = exchange(routed.port, adt("NOWHERE", family))
    assert segment(ack, "MSA")[1] == "AR", ack
    err = segment(ack, "ERR")
    assert "MSH^1^6" in "|".join(err) and "NOWHERE" in ack, ack
    kept = MessageStore(net.app.state.fhir.engine).recent((REJECTED,), 20)
    assert any("NOWHERE" in (r.error or "") for r in kept)
    assert all(families(net, code, family) == 0 for code in ("default", A, B))


def test_a_suspended_hospital_gets_ar_at_once(net: Network, routed: Running) -> None:
    net.store.set_status(B, TenantStatus.SUSPENDED)
    family = f"Suspended{uuid.uuid4().hex[:6]}"
    try:
        [ack] = exchange(routed.port, adt("LAB-B", family))
        assert segment(ack, "MSA")[1] == "AR" and "suspended" in ack, ack
        [other] = exchange(routed.port, adt("LAB-A", family))  # the other hospital goes on
        assert segment(other, "MSA")[1] == "AA", other
    finally:
        net.store.set_status(B, TenantStatus.ACTIVE)
    # The server learns of B's return within a second (another process made the change).
    wait_until(lambda: net.http.get(f"{net.host}/fhir/{B}/metadata").status_code == 200, 10, "B active again")
    assert families(net, B, family) == 0 and families(net, A, family) == 1

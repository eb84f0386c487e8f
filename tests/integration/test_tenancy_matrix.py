"""The isolation matrix (issue 13): every route and operation of the app, alone and inside a transaction Bundle,
between two hospitals on one server. Generated from the application like the access matrix
(access_matrix_support.py): a route or operation added later joins it without being listed here.

- ``foreign``: the attacker hospital's administrator token at the victim hospital's URLs, with the victim's
  ids. A foreign token is worth no more than no token at all (same status, 401 where a token is needed), and
  nothing of the victim comes back.
- ``own``: the same token at the attacker's own URLs, with the victim's ids: the victim's data is not there,
  not even as a count, a version or an id in an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import Backend
from tests.integration.access_matrix_support import Case, all_cases
from tests.integration.tenancy_support import Network, network
from tests.integration.test_access_matrix import COUNTED, _send, _status, _totals, build_world
from tests.integration.test_auth_support import Smart

VICTIM, ATTACKER = "mx-victim", "mx-attacker"


def _params() -> Iterator[Any]:
    for case in all_cases():
        if case.method == "WS":
            continue  # the websocket: test_tenancy.py (a foreign binding token is refused like any other)
        yield pytest.param(case, "foreign", "top", id=f"foreign|top|{case.name}")
        for wrap in ("top", "transaction") if case.fhir else ("top",):
            yield pytest.param(case, "own", wrap, id=f"own|{wrap}|{case.name}")


@pytest.fixture(scope="module")
def net(backend: Backend) -> Iterator[Network]:
    yield from network(backend, (VICTIM, ATTACKER))


@pytest.fixture(scope="module")
def world(net: Network) -> dict[str, Any]:
    """The victim's patients, records, Group, Subscription and export job (the access matrix's world), and
    the attacker's administrator token."""
    w = build_world(net.smart[VICTIM])
    w["attacker"] = net.admin(ATTACKER)
    w["secret"] = [s for values in w["secrets"].values() for s in values] + [w["job"]]
    # What the attacker writes into its own hospital under the victim's ids carries none of the victim's
    # markers: any marker seen there came from the victim.
    own = dict(w)
    for key in [k for k in w if k.startswith("content:")]:
        text = w[key]
        for marker in w["secret"]:
            text = text.replace(marker, "copied") if marker not in (w.get(key[8:]), w["b"]) else text
        own[key] = text
    w["own"] = own
    return w


def _leaked(text: str, said: str, world: dict[str, Any], *, markers_only: bool = False) -> list[str]:
    """The victim's ids and markers in ``text`` that the request did not carry itself. ``markers_only``: in
    the attacker's own hospital, where its earlier writes may have stored the victim's ids it was given."""
    markers = {world[f"marker:{t}"] for t in ("Patient", "Observation", "Condition", "Encounter")}
    return [s for s in world["secret"] if s in text and s not in said and (s in markers or not markers_only)]


@pytest.mark.parametrize(("case", "mode", "wrap"), list(_params()))
def test_isolation(net: Network, world: dict[str, Any], case: Case, mode: str, wrap: str) -> None:
    victim: Smart = net.smart[VICTIM]
    attacker: Smart = net.smart[ATTACKER]
    if mode == "foreign":
        r, said = _send(victim, case, wrap, world["attacker"], world)
        assert r.status_code < 500, (r.status_code, r.text[:500])
        assert not _leaked(r.text, said, world), f"the victim's data came back: {r.text[:800]}"
        bare, _ = _send(victim, case, wrap, "", world)  # the same request without any token
        if bare.status_code == 401:
            assert r.status_code == 401, f"a foreign token got {r.status_code} where none gets 401: {r.text[:300]}"
        return
    r, said = _send(attacker, case, wrap, world["attacker"], world["own"])
    status = _status(r, wrap)
    assert r.status_code < 500 and status < 500, (r.status_code, r.text[:500])
    text = r.text
    leaked = _leaked(text, said, world, markers_only=True)
    assert not leaked, f"the victim's data came back in the attacker's hospital: {text[:800]}"
    if case.name.startswith(COUNTED) and text.startswith("{"):
        assert all(t == 0 for t in _totals(orjson.loads(text))), f"the victim's data counted: {text[:500]}"
    if case.instance and "op" not in case.extra and case.method in ("GET", "HEAD"):
        assert status in (404, 410), f"the victim's {case.target} answered {status} in the attacker's hospital"


def test_the_victim_data_survived(net: Network, world: dict[str, Any]) -> None:
    """Every write above landed (if at all) in the attacker's hospital: the victim's records are as made."""
    for t in ("Patient", "Observation", "Condition", "Encounter"):
        r = net.smart[VICTIM].fhir("GET", f"{t}/{world[t]}", world["admin"])
        assert r.status_code == 200, (t, r.text)
        assert world[f"marker:{t}"] in r.text and r.json()["meta"]["versionId"] == "2"

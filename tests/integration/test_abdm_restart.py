"""ABDM, our hospital as HIU across a restart: the health-information request is made by one server; the remote
HIP's encrypted pages reach a new server process on the same store and port, which decrypts them with the key
pair the first one sealed into the pull's Task (nothing is carried over in memory)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from interfaces.abdm.hiu import PULL_SYSTEM
from interfaces.abdm.keystore import KeyStoreError, unseal
from interfaces.abdm.service import abdm_for
from interfaces.abdm.settings import AbdmSettings, settings_for
from tests.conftest import Backend, _free_port, make_backend, wait_until
from tests.integration.abdm_support import NOTIFY, Simulator, start_hospital, start_simulator, visit_data


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    yield from start_simulator()


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
def test_a_push_after_a_restart_is_decrypted_by_the_new_server(
        backend_name: str, sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> None:
    for backend in make_backend(backend_name, tmp_path_factory.mktemp(f"abdm-restart-{backend_name}")):
        _request_restart_push(backend, sim)


def _request_restart_push(backend: Backend, sim: Simulator) -> None:
    port = _free_port()
    first = start_hospital(backend, sim, port=port, install_ig=False)
    hospital = next(first)
    try:
        data = visit_data(hospital, address=f"rest{uuid.uuid4().hex[:8]}@sbx")
        resp = hospital.http.post("/abdm/hiu/consent-requests", headers=hospital.admin, json={
            "patient": f"Patient/{data['patient']}", "hiTypes": ["OPConsultation", "Prescription"],
            "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
            "dataEraseAt": "2030-01-01T00:00:00.000Z"})
        assert resp.status_code == 202, resp.text
        request_consent = resp.json()["consent"]
        ids: list[str] = []

        def registered() -> bool:
            ids[:] = [i["value"] for i in hospital.read(request_consent)["identifier"]
                      if i["system"] == "https://abdm.gov.in/consent-request"]
            return bool(ids)

        wait_until(registered, 20, "the consent request's on-init")
        sim.post("/sim/config", {"holdPushes": True})  # the remote HIP answers, and pushes later
        held = sim.http.get("/sim/state").json()["held"]
        sim.post("/sim/cm/grant", {"consentRequestId": ids[0]})
        wait_until(lambda: sim.http.get("/sim/state").json()["held"] > held, 30, "the remote HIP's on-request")
        pulls = _pulls(hospital.read("Task", [("_count", "200")]))
        assert len(pulls) == 1 and pulls[0]["status"] == "in-progress"
        sealed = next(i["valueString"] for i in pulls[0]["input"] if i["type"]["text"] == "keyMaterial")
        assert unseal(settings_for(hospital.fhir), sealed, pulls[0]["id"]).private  # sealed with our secret
        with pytest.raises(KeyStoreError):  # and nothing else opens it
            unseal(AbdmSettings(gateway_url=sim.url, key_secret="another"), sealed, pulls[0]["id"])
        with pytest.raises(KeyStoreError):  # nor does it open as another Task's key
            unseal(settings_for(hospital.fhir), sealed, "abdm-hiu-pull-other")
        old = abdm_for(hospital.fhir)
    finally:
        first.close()  # the server stops: its memory goes with it
    sim.post("/sim/config", {"holdPushes": False})
    second = start_hospital(backend, sim, port=port, install_ig=False)
    restarted = next(second)
    try:
        assert abdm_for(restarted.fhir) is not old
        assert sim.post("/sim/hip/release", {})["released"] >= 1
        documents: list[dict[str, Any]] = []

        def stored() -> bool:
            found = restarted.read("Bundle", [("identifier", f"https://sim-hip.example/documents|"
                                                             f"sim-op:{data['address']}")])
            documents[:] = [e["resource"] for e in found.get("entry", [])]
            return bool(documents)

        wait_until(stored, 30, "the pushed documents decrypted by the restarted server")
        pushes = [p for p in sim.http.get("/sim/state").json()["pushes"] if p["page"] in (1, 2)][-2:]
        assert [p["status"] for p in pushes] == [202, 202]
        wait_until(lambda: any(e["body"]["notification"]["notifier"]["type"] == "HIU" and
                               e["body"]["notification"]["transactionId"] == pushes[-1]["transactionId"]
                               for e in sim.log(NOTIFY)), 20, "our HIU's transfer notification")
        done = _pulls(restarted.read("Task", [("_count", "200")]))
        assert done[0]["status"] == "completed"
        assert not [i for i in done[0].get("input", []) if i["type"]["text"] == "keyMaterial"]  # spent: dropped
    finally:
        second.close()


def _pulls(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])
            if any(i["system"] == PULL_SYSTEM + "/request" for i in e["resource"].get("identifier", []))]

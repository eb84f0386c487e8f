"""FHIR_VALIDATE_PROFILES: writes validated against their meta.profile (422 on error), on both databases,
through a real HTTP server started with the setting on."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from fhir_server.app import create_app
from fhir_server.rest.server import FhirServer
from tests.conftest import Backend, _free_port, uvicorn_config, wait_until
from tests.integration import validate_profiles as tp


def _serve(backend: Backend, **settings: Any) -> Iterator[httpx.Client]:
    conf = backend.settings.model_copy(update={"validate_profiles": True, **settings})
    app = create_app(conf, FhirServer(conf, backend.engine))
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir/", timeout=60) as http:
        yield http
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture(scope="module")
def lenient(backend: Backend) -> Iterator[httpx.Client]:
    yield from _serve(backend)


@pytest.fixture(scope="module")
def strict(backend: Backend) -> Iterator[httpx.Client]:
    yield from _serve(backend, validate_profiles_strict=True)


@pytest.fixture
def store(backend: Backend, lenient: httpx.Client) -> httpx.Client:
    backend.truncate()
    for res in [*tp.terminology(), tp.patient_profile(), tp.observation_profile()]:
        r = lenient.put(f"{res['resourceType']}/{res['id']}", json=res)
        assert r.status_code in (200, 201), r.text
    return lenient


def _error_paths(r: httpx.Response) -> set[str]:
    assert r.status_code == 422, r.text
    return {i["expression"][0] for i in r.json()["issue"] if i["severity"] == "error"}


def test_writes_must_conform_to_their_profiles(store: httpx.Client) -> None:
    good = tp.good_patient()
    assert store.put("Patient/p1", json=good).status_code == 201
    bad = copy.deepcopy(good)
    bad["gender"] = "unknown"
    assert _error_paths(store.put("Patient/p1", json=bad)) == {"Patient.gender"}
    assert store.get("Patient/p1").json()["meta"]["versionId"] == "1"  # nothing written
    del bad["id"]
    assert "Patient.gender" in _error_paths(store.post("Patient", json=bad))
    # each entry of a transaction is checked; one bad entry fails the whole transaction
    obs = tp.good_observation()
    del obs["component"]
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": tp.good_patient(), "request": {"method": "PUT", "url": "Patient/p2"}},
        {"resource": obs, "request": {"method": "POST", "url": "Observation"}}]}
    r = store.post("", json=tx)
    assert r.status_code == 422, r.text
    assert store.get("Patient/p2").status_code == 404
    # base invariants apply to every write once the setting is on, profiled or not
    invariant = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                 "valueString": "a", "dataAbsentReason": {"text": "b"}}
    assert _error_paths(store.post("Observation", json=invariant)) == {"Observation"}


def test_unknown_profile_is_a_warning_unless_strict(store: httpx.Client, strict: httpx.Client) -> None:
    unknown = {"resourceType": "Patient", "meta": {"profile": ["http://example.org/not-installed"]},
               "name": [{"family": "Das"}]}
    assert store.post("Patient", json=unknown).status_code == 201
    r = strict.post("Patient", json=unknown)
    assert _error_paths(r) == {"Patient"}
    assert any("not known" in i["diagnostics"] for i in r.json()["issue"] if i["severity"] == "error")
    assert strict.post("Patient", json=tp.good_patient()).status_code == 201


def test_a_ucum_quantity_with_a_non_ucum_code_is_refused(store: httpx.Client) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
           "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "blorbs"}}
    assert _error_paths(store.post("Observation", json=obs)) == {"Observation.value.ofType(Quantity).code"}
    assert store.get("Observation").json().get("total", 0) == 0  # nothing stored
    obs["valueQuantity"]["code"] = "mmol/L"
    assert store.post("Observation", json=obs).status_code == 201

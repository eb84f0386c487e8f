"""Bulk export under SMART: the token's access context goes with the job, files need the same caller's
token, both databases (embedded runner)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import Backend
from tests.integration.bulk_support import ASYNC, download, kick_off, poll
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def _create(smart: Smart, resource: dict[str, Any]) -> str:
    r = smart.as_admin("POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def records(smart: Smart) -> dict[str, str]:
    smart.backend.truncate()
    a = _create(smart, {"resourceType": "Patient", "name": [{"family": "Alpha"}]})
    b = _create(smart, {"resourceType": "Patient", "name": [{"family": "Beta"}]})

    def obs(pid: str) -> str:
        return _create(smart, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                               "subject": {"reference": f"Patient/{pid}"}})
    return {"a": a, "b": b, "obs_a": obs(a), "obs_b": obs(b),
            "org": _create(smart, {"resourceType": "Organization", "name": "Lab"})}


def _export(smart: Smart, path: str, token: str) -> tuple[dict[str, Any], dict[str, set[str]]]:
    resp = poll(smart.http, kick_off(smart.http, f"{smart.base}/{path}", token), token)
    assert resp.status_code == 200, resp.text
    found = download(smart.http, resp.json(), token)
    return resp.json(), {t: {r["id"] for r in rs} for t, rs in found.items()}


def test_patient_scoped_token_cannot_export_other_patients(smart: Smart, records: dict[str, str]) -> None:
    token = _user_token(smart, "doctor", "launch/patient patient/*.rs", patient=records["a"])["access_token"]
    for path in ("Patient/$export", "$export"):
        manifest, found = _export(smart, path, token)
        assert manifest["requiresAccessToken"] is True
        assert found == {"Patient": {records["a"]}, "Observation": {records["obs_a"]}}, path


def test_system_observation_scope_exports_only_observations(smart: Smart, records: dict[str, str]) -> None:
    token = smart.system_token("system/Observation.rs")
    _manifest, found = _export(smart, "$export", token)
    assert found == {"Observation": {records["obs_a"], records["obs_b"]}}
    resp = smart.http.get(f"{smart.base}/$export?_type=Patient", headers={**ASYNC, "Authorization": f"Bearer {token}"})
    assert resp.status_code == 403 and resp.json()["issue"][0]["expression"] == ["_type"]


def test_status_and_files_need_the_same_callers_token(smart: Smart, records: dict[str, str]) -> None:
    owner = smart.system_token("system/*.rs")
    other = smart.system_token("system/*.rs")  # same scopes, another client
    status_url = kick_off(smart.http, f"{smart.base}/$export?_type=Organization", owner)
    manifest = poll(smart.http, status_url, owner).json()
    file_url = manifest["output"][0]["url"]
    assert smart.http.get(file_url, headers={"Authorization": f"Bearer {owner}"}).status_code == 200
    for url in (status_url, file_url):
        assert smart.http.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 403
        assert smart.http.get(url).status_code == 401
    assert smart.http.delete(status_url, headers={"Authorization": f"Bearer {other}"}).status_code == 403


def test_admin_outbox_view_needs_an_admin(smart: Smart, records: dict[str, str]) -> None:
    url = f"{smart.root}/admin/outbox"
    assert smart.http.get(url).status_code == 401
    doctor = _user_token(smart, "doctor", "user/*.rs")["access_token"]
    assert smart.http.get(url, headers={"Authorization": f"Bearer {doctor}"}).status_code == 403
    admin = _user_token(smart, "admin", "user/*.rs")["access_token"]
    resp = smart.http.get(url, headers={"Authorization": f"Bearer {admin}"})
    assert resp.status_code == 200 and set(resp.json()["counts"]) == {"pending", "held", "delivering", "done", "dead"}

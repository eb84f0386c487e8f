"""A real SMART client, the PyPI ``fhirclient``, doing a standalone launch against the running server: it
finds the endpoints in the CapabilityStatement's oauth-uris extension, sends PKCE, exchanges the code,
then reads within the patient it was given (and not beyond), on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import orjson
import pytest

from tests.conftest import Backend
from tests.integration.test_auth_support import PASSWORD, Smart, hidden_fields, smart_server

REDIRECT = "http://127.0.0.1:9/fhirclient-callback"
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def test_fhirclient_standalone_launch(smart: Smart) -> None:
    fhirclient = pytest.importorskip("fhirclient.client")
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient
    from fhirclient.server import FHIRNotFoundException, FHIRPermissionDeniedException

    def create(resource: dict) -> str:
        r = smart.as_admin("POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])
    mine = create({"resourceType": "Patient", "name": [{"family": "Mine"}]})
    other = create({"resourceType": "Patient", "name": [{"family": "Other"}]})
    my_obs = create({"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                     "subject": {"reference": f"Patient/{mine}"}})
    create({"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
            "subject": {"reference": f"Patient/{other}"}})

    scope = "launch/patient patient/*.read openid fhirUser"
    app = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    user = smart.user("doctor", "Practitioner/fc-1")
    client = fhirclient.FHIRClient(settings={"app_id": app["client_id"], "api_base": smart.base,
                                             "redirect_uri": REDIRECT, "scope": scope})
    url = client.authorize_url
    assert url.startswith(f"{smart.root}/auth/authorize?")
    page = smart.http.get(url)
    assert page.status_code == 200, page.text
    form = [*hidden_fields(page.text), ("username", user), ("password", PASSWORD), ("decision", "allow"),
            ("patient", mine)]
    done = smart.http.post(f"{smart.root}/auth/authorize", content=urlencode(form),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 302, done.text
    client.handle_callback(done.headers["location"])
    assert client.ready and client.patient_id == mine

    patient = Patient.read(mine, client.server)
    assert patient.name[0].family == "Mine"
    found = Observation.where({"subject": f"Patient/{mine}"}).perform_resources_iter(client.server)
    assert [o.id for o in found] == [my_obs]
    everything = Observation.where({}).perform_resources_iter(client.server)
    assert {o.id for o in everything} == {my_obs}  # the other patient's observation is not there
    with pytest.raises((FHIRPermissionDeniedException, FHIRNotFoundException)):
        Patient.read(other, client.server)

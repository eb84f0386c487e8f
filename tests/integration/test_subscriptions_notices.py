"""What a rest-hook subscriber is shown (issue 21 items 5 and 7): absolute URLs in every notification
although FHIR_BASE_URL is unset (the base the subscription was written through is kept with it), on the
live server with a real webhook receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer
from tests.integration.subscription_receiver import Receiver, start_receiver
from tests.integration.test_subscriptions import dispatcher, observation, status
from tests.integration.test_subscriptions_backport import backport, params, topic


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = start_receiver()
    yield receiver
    receiver.close()


def test_rest_hook_notifications_carry_absolute_urls_without_a_configured_base(api: LiveServer,
                                                                               hook: Receiver) -> None:
    assert not api.fhir.settings.base_url  # the case of the defect: nothing configured
    topic(api)
    response = backport(api, hook.url, filters=("Observation?patient=Patient/B",))
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    d = dispatcher(api)
    d.run_once()
    [handshake] = hook.bodies()
    assert params(handshake)["subscription"][0]["reference"] == f"{api.url}/Subscription/{sid}"
    assert status(api, sid)["status"] == "active"  # the server's own status write kept the client's base

    obs = observation(api, "1-1", "B")
    assert d.run_once() == 1
    note = hook.bodies()[-1]
    entry = note["entry"][1]
    assert entry["fullUrl"] == f"{api.url}/Observation/{obs['id']}"
    assert note["entry"][0]["fullUrl"].startswith("urn:uuid:")  # the status Parameters: no RESTful id
    p = params(note)
    assert p["subscription"][0]["reference"] == f"{api.url}/Subscription/{sid}"
    [focus] = [x["valueReference"]["reference"] for x in p["notification-event"][0] if x["name"] == "focus"]
    assert focus.startswith(f"{api.url}/Observation/{obs['id']}")

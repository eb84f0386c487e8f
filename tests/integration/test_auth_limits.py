"""Rate limits on sign-in POSTs and the token endpoint, through the real HTTP server, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, authorize, pkce, smart_server

REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, auth_login_rate_per_minute=3, auth_token_rate_per_minute=4)


def test_sign_in_and_token_requests_are_rate_limited(smart: Smart) -> None:
    user = smart.user("doctor")
    client = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    _, challenge = pkce()
    statuses = [authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, password="Wrong-Password-1",
                          challenge=challenge).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    backend = smart.store.create_client("svc", ["client_credentials"], "system/*.rs", [])
    token_statuses = [smart.http.post(smart.token_url, data={"grant_type": "client_credentials"},
                                      auth=(backend["client_id"], backend["client_secret"])) for _ in range(5)]
    assert [r.status_code for r in token_statuses] == [200, 200, 200, 200, 429]
    assert int(token_statuses[-1].headers["retry-after"]) > 0
    assert token_statuses[-1].json()["error"] == "slow_down"

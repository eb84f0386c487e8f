"""Settings-driven behaviour through the real HTTP server, on both databases: rate limits on sign-in POSTs
and the token endpoint, and the configured ``smart_style_url`` in launch context."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, authorize, code_from, exchange, pkce, smart_server

REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, auth_login_rate_per_minute=3, auth_token_rate_per_minute=4,
                            auth_smart_style_url="https://ehr.example.org/smart-style.json")


def test_smart_style_url_in_the_token_response(smart: Smart) -> None:
    smart.auth.login_limit.reset()
    smart.auth.token_limit.reset()
    user = smart.user("doctor")
    client = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    code = code_from(authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, challenge=challenge),
                     REDIRECT)
    body = exchange(smart, client["client_id"], code, REDIRECT, verifier).json()
    assert body["smart_style_url"] == "https://ehr.example.org/smart-style.json"


def test_sign_in_and_token_requests_are_rate_limited(smart: Smart) -> None:
    smart.auth.login_limit.reset()
    smart.auth.token_limit.reset()
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

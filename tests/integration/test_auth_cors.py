"""CORS for registered browser apps (origins of registered redirect URIs only), over real HTTP, both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, smart_server


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def test_registered_origin_only(smart: Smart) -> None:
    smart.client(["authorization_code"], "patient/*.rs", redirect_uris=["https://growth.example.org/app/cb"],
                 public=True)
    smart.auth.origins.refresh()
    app = "https://growth.example.org"
    preflight = smart.http.options(f"{smart.base}/Patient", headers={
        "Origin": app, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == app
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in preflight.headers
    token_preflight = smart.http.options(f"{smart.root}/auth/token", headers={
        "Origin": app, "Access-Control-Request-Method": "POST"})
    assert token_preflight.headers["access-control-allow-origin"] == app
    # The actual call carries the header too (here a 401, which the app must be able to read).
    r = smart.fhir("GET", "Patient", headers={"Origin": app})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == app
    assert "WWW-Authenticate" in r.headers["access-control-expose-headers"]
    conf = smart.http.get(f"{smart.base}/.well-known/smart-configuration", headers={"Origin": app})
    assert conf.headers["access-control-allow-origin"] == app

    evil = "https://evil.example.com"
    blocked = smart.http.options(f"{smart.base}/Patient", headers={"Origin": evil,
                                                                   "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in blocked.headers
    assert "access-control-allow-origin" not in smart.fhir("GET", "metadata", headers={"Origin": evil}).headers
    # The sign-in page is never opened to other origins.
    page = smart.http.options(f"{smart.root}/auth/authorize", headers={"Origin": app,
                                                                       "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in page.headers

"""Shared pieces of the SMART tests: a live server that requires tokens, users, clients, keys, flows.

Imported by tests/integration/test_auth_*.py (it holds no tests itself).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_server.api.auth import SmartAuth
from fhir_server.auth.store import AuthStore
from tests.conftest import Backend, LiveServer, _free_port, uvicorn_config, wait_until

PASSWORD = "Correct-Horse-42!"


@dataclass
class Smart:
    root: str  # http://127.0.0.1:PORT
    base: str  # FHIR base
    http: httpx.Client
    store: AuthStore
    auth: SmartAuth
    backend: Backend

    @property
    def token_url(self) -> str:
        return f"{self.root}/auth/token"

    def user(self, role: str, fhir_user: str | None = None) -> str:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        self.store.create_user(name, PASSWORD, role, fhir_user)
        return name

    def client(self, grants: list[str], scope: str, **kw: Any) -> dict[str, Any]:
        return self.store.create_client(f"app-{uuid.uuid4().hex[:6]}", grants, scope, kw.pop("redirect_uris", []), **kw)

    def fhir(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Accept": "application/fhir+json", **kw.pop("headers", {})}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, f"{self.base}/{path}", headers=headers, **kw)

    def as_admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Seed data with a backend token that may do anything."""
        return self.fhir(method, path, self.system_token("system/*.cruds"), **kw)

    def system_token(self, scope: str) -> str:
        client = self.client(["client_credentials"], scope)
        r = self.http.post(self.token_url, data={"grant_type": "client_credentials", "scope": scope},
                           auth=(client["client_id"], client["client_secret"]))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])


def smart_server(backend: Backend, **settings_overrides: Any) -> Iterator[Smart]:
    """A real uvicorn server with FHIR_AUTH_REQUIRED=true on the test backend (each module's ``smart``)."""
    # Many sign-ins from one address in a few seconds: rate limits off unless a test sets them.
    settings = backend.settings.model_copy(update={"auth_required": True, "auth_login_rate_per_minute": 0,
                                                   "auth_token_rate_per_minute": 0, **settings_overrides})
    app, fhir, fhir_path = backend.server_app(settings)  # a tenant's backend: its /fhir/{tenant}, /t/{tenant}
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    host = f"http://127.0.0.1:{port}"
    root = host if fhir_path == "/fhir" else f"{host}/t/{backend.tenant}"
    auth = app.state.tenants.stack(fhir.settings.tenant).extras["auth"]
    with httpx.Client(timeout=60) as http:
        yield Smart(root, host + fhir_path, http, auth.store, auth, backend)
    server.should_exit = True
    thread.join(timeout=20)


def smart_of(live: LiveServer) -> Smart:
    """The SMART helpers on the shared live server (auth off: the embedded default), for what needs a token
    there too (the /admin views)."""
    root = live.url.removesuffix("/fhir")
    return Smart(root, live.url, live.http, AuthStore(live.backend.engine), SmartAuth(live.fhir), live.backend)


# --- backend services -------------------------------------------------------------------------------------------

def new_key(alg: str) -> RSAKey | ECKey:
    kid = uuid.uuid4().hex
    if alg.startswith("RS"):
        return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": alg, "use": "sig"})
    return ECKey.generate_key("P-384" if alg == "ES384" else "P-256", parameters={"kid": kid, "alg": alg, "use": "sig"})


def assertion(key: RSAKey | ECKey, alg: str, client_id: str, aud: str, *, exp_in: int = 240,
              jti: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + exp_in, "iat": now,
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def backend_token_request(smart: Smart, signed: str, scope: str) -> httpx.Response:
    return smart.http.post(smart.token_url, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed})


# --- authorization code with PKCE -----------------------------------------------------------------------------

def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def hidden_fields(html: str) -> list[tuple[str, str]]:
    import html as htmllib
    return [(htmllib.unescape(n), htmllib.unescape(v))
            for n, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', html)]


def authorize(smart: Smart, client_id: str, redirect_uri: str, scope: str, username: str, *,
              password: str = PASSWORD, challenge: str | None = None, extra: dict[str, str] | None = None,
              form: dict[str, str] | None = None, decision: str = "allow") -> httpx.Response:
    """GET the sign-in page, then POST it like a browser; returns the POST's response (302 on success)."""
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
             "state": "st-" + uuid.uuid4().hex[:6], "aud": smart.base, **(extra or {})}
    if challenge:
        query.update(code_challenge=challenge, code_challenge_method="S256")
    page = smart.http.get(f"{smart.root}/auth/authorize", params=query)
    assert page.status_code == 200, page.text
    data = [*hidden_fields(page.text), ("username", username), ("password", password), ("decision", decision),
            *(form or {}).items()]
    return smart.http.post(f"{smart.root}/auth/authorize", content=urlencode(data),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})


def code_from(response: httpx.Response, redirect_uri: str) -> str:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(redirect_uri + "?"), location
    return str(dict(httpx.URL(location).params)["code"])


def exchange(smart: Smart, client_id: str, code: str, redirect_uri: str, verifier: str | None,
             auth: tuple[str, str] | None = None) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if auth is None:
        data["client_id"] = client_id
    if verifier:
        data["code_verifier"] = verifier
    return smart.http.post(smart.token_url, data=data, auth=auth) if auth else smart.http.post(smart.token_url,
                                                                                                data=data)

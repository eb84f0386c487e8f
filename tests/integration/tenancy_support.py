"""Hospitals on one server for the tenancy tests: a live auth-required server on the default backend and a
``Smart`` helper per tenant (its /fhir/{tenant} base, /t/{tenant}/auth, its own users, clients and keys)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import uvicorn

from fhir_server.tenancy.model import DEFAULT, TenantStatus
from fhir_server.tenancy.store import TenantStore
from tests.conftest import Backend, _free_port, uvicorn_config, wait_until
from tests.integration.test_auth_support import Smart

JSON = {"Content-Type": "application/fhir+json"}


@dataclass
class Network:
    host: str
    http: httpx.Client
    app: Any
    store: TenantStore
    smart: dict[str, Smart]  # by tenant code ("default" too)

    def admin(self, code: str) -> str:
        """A backend token of ``code`` that may do anything there."""
        return self.smart[code].system_token("system/*.cruds")

    def create(self, code: str, token: str, resource: dict[str, Any]) -> dict[str, Any]:
        r = self.smart[code].fhir("POST", resource["resourceType"], token, content=orjson.dumps(resource),
                                  headers=JSON)
        assert r.status_code == 201, r.text
        return dict(r.json())


def network(backend: Backend, codes: tuple[str, ...], **settings: Any) -> Iterator[Network]:
    """Tenants ``codes`` (made once per backend, active) beside the default, on one server process."""
    store = TenantStore(backend.engine, backend.settings)
    for code in codes:
        tenant = store.get(code)
        if tenant is None:
            store.create(code, f"Hospital {code}")
        elif tenant.status != TenantStatus.ACTIVE:
            store.set_status(code, TenantStatus.ACTIVE)
        store.set_limits(code, max_users=None, max_patients=None)
    app, _fhir, _path = backend.server_app(backend.settings.model_copy(update={
        "auth_required": True, "auth_login_rate_per_minute": 0, "auth_token_rate_per_minute": 0, **settings}))
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    host = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=60) as http:
        smart: dict[str, Smart] = {}
        for code in (DEFAULT, *codes):
            auth = app.state.tenants.stack(code).extras["auth"]
            root, base = (host, f"{host}/fhir") if code == DEFAULT else (f"{host}/t/{code}", f"{host}/fhir/{code}")
            smart[code] = Smart(root, base, http, auth.store, auth, backend)
        yield Network(host, http, app, store, smart)
    server.should_exit = True
    thread.join(timeout=20)

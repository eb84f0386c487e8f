"""``fhir-server users create`` / ``clients create`` as an operator runs them (real processes), and the
credentials they print working against the real HTTP server, on both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import KeySet

from tests.conftest import Backend
from tests.integration.test_auth_support import (
    Smart,
    assertion,
    authorize,
    backend_token_request,
    code_from,
    exchange,
    new_key,
    pkce,
    smart_server,
)

CLI = [sys.executable, "-m", "fhir_server.cli"]


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def run_cli(smart: Smart, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "FHIR_DATABASE_URL": smart.backend.settings.database_url, **(env or {})}
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_users_create(smart: Smart, tmp_path: Path) -> None:
    generated = printed(run_cli(smart, "users", "create", "--username", "cli-doc", "--role", "doctor",
                                "--fhir-user", "Practitioner/1", cwd=tmp_path))
    assert generated["role"] == "doctor" and generated["fhirUser"] == "Practitioner/1"
    assert len(generated["password"]) >= 12
    assert smart.store.login("cli-doc", generated["password"]) is not None
    chosen = printed(run_cli(smart, "users", "create", "--username", "cli-nurse", "--role", "nurse", cwd=tmp_path,
                             env={"FHIR_NEW_PASSWORD": "Chosen-Password-77"}))
    assert "password" not in chosen  # the operator chose it; never echoed
    weak = run_cli(smart, "users", "create", "--username", "weak", "--role", "nurse", "--password", "short",
                   cwd=tmp_path)
    assert weak.returncode == 2 and "too weak" in weak.stderr and "short" not in weak.stdout
    duplicate = run_cli(smart, "users", "create", "--username", "cli-doc", "--role", "doctor", cwd=tmp_path)
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    bad_role = run_cli(smart, "users", "create", "--username", "x", "--role", "janitor", cwd=tmp_path)
    assert bad_role.returncode == 2


def test_clients_create_and_use_them(smart: Smart, tmp_path: Path) -> None:
    secret_client = printed(run_cli(smart, "clients", "create", "--name", "Insurer", "--grant", "client_credentials",
                                    "--scope", "system/Patient.rs", cwd=tmp_path))
    assert secret_client["token_endpoint_auth_method"] == "client_secret_basic" and secret_client["client_secret"]
    r = smart.http.post(smart.token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                        auth=(secret_client["client_id"], secret_client["client_secret"]))
    assert r.status_code == 200, r.text

    key = new_key("ES384")
    (tmp_path / "jwks.json").write_text(json.dumps(KeySet([key]).as_dict(private=False)))
    jwt_client = printed(run_cli(smart, "clients", "create", "--name", "NHCX", "--grant", "client_credentials",
                                 "--scope", "system/*.rs", "--jwks-file", "jwks.json", cwd=tmp_path))
    assert jwt_client["token_endpoint_auth_method"] == "private_key_jwt" and "client_secret" not in jwt_client
    r = backend_token_request(smart, assertion(key, "ES384", jwt_client["client_id"], smart.token_url), "system/*.rs")
    assert r.status_code == 200, r.text

    redirect = "http://127.0.0.1:9/cb"
    app = printed(run_cli(smart, "clients", "create", "--name", "Growth chart", "--grant", "authorization_code",
                          "--scope", "openid fhirUser user/*.rs", "--redirect-uri", redirect, "--public",
                          cwd=tmp_path))
    assert app["token_endpoint_auth_method"] == "none" and "refresh_token" in app["grant_types"]
    user = smart.user("doctor")
    verifier, challenge = pkce()
    code = code_from(authorize(smart, app["client_id"], redirect, "user/*.rs", user, challenge=challenge), redirect)
    assert exchange(smart, app["client_id"], code, redirect, verifier).status_code == 200
    missing_redirect = run_cli(smart, "clients", "create", "--name", "x", "--grant", "authorization_code",
                               "--scope", "user/*.rs", cwd=tmp_path)
    assert missing_redirect.returncode == 2 and "redirect URI" in missing_redirect.stderr


def test_first_start_creates_an_admin_once(smart: Smart) -> None:
    import io

    from sqlalchemy import delete

    from fhir_server.auth.cli import first_start
    from fhir_server.auth.tables import AUTH_USER

    with smart.backend.engine.begin() as conn:
        conn.execute(delete(AUTH_USER))
    production = smart.backend.settings.model_copy(update={"environment": "production"})
    assert not first_start(production, smart.store, io.StringIO())
    out = io.StringIO()
    assert first_start(smart.backend.settings, smart.store, out)
    password = out.getvalue().split("password\n", 1)[1].split()[0]
    admin = smart.store.login("admin", password)
    assert admin is not None and admin.role == "admin"
    assert "fhir-server clients create" in out.getvalue()
    assert not first_start(smart.backend.settings, smart.store, io.StringIO())  # only on an empty user table

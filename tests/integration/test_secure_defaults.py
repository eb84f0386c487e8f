"""Secure by default: `serve` on a network address needs auth (or an explicit --insecure), and the /admin
views need an admin user's token even on the open embedded default (auth off). Real processes and HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from fhir_server.cli import is_loopback
from tests.conftest import PROCESS_START_TIMEOUT, Backend, LiveServer, _free_port, wait_until
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import smart_of
from tests.integration.test_cli import CLI


def _env(backend: Backend, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    return {**base, "FHIR_DATABASE_URL": backend.settings.database_url, "FHIR_OUTBOX_DISPATCHER": "false", **extra}


def test_admin_views_need_an_admin_token_with_auth_off(api: LiveServer) -> None:
    local = smart_of(api)
    assert not api.fhir.settings.auth_required
    assert api.http.get("Patient").status_code == 200  # the FHIR API itself is open on this default
    for path in ("admin/outbox", "admin/hl7/messages"):
        url = f"{local.root}/{path}"
        refused = httpx.get(url)
        assert refused.status_code == 401 and refused.json()["resourceType"] == "OperationOutcome", path
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert httpx.post(f"{local.root}/admin/outbox/1/retry").status_code == 401
        doctor = _user_token(local, "doctor", "user/*.rs")["access_token"]
        assert httpx.get(url, headers={"Authorization": f"Bearer {doctor}"}).status_code == 403, path
        admin = _user_token(local, "admin", "user/*.rs")["access_token"]
        assert httpx.get(url, headers={"Authorization": f"Bearer {admin}"}).status_code == 200, path


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "hospital.example"))


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_refuses_a_network_address_without_auth(backend: Backend, tmp_path: Path, host: str) -> None:
    port = str(_free_port())
    out = subprocess.run([*CLI, "serve", "--host", host, "--port", port], cwd=tmp_path, env=_env(backend),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [f"refusing to serve {host} without authentication: set FHIR_AUTH_REQUIRED=true "
                     "(or pass --insecure)"]
    assert not (tmp_path / "data").exists()  # refused before touching anything


@pytest.mark.parametrize("flags", [("--insecure",), ()])
def test_serve_starts_with_insecure_or_with_auth_required(backend: Backend, tmp_path: Path,
                                                          flags: tuple[str, ...]) -> None:
    port = _free_port()
    env = _env(backend, **({} if flags else {"FHIR_AUTH_REQUIRED": "true"}))
    proc = subprocess.Popen([*CLI, "serve", "--host", "0.0.0.0", "--port", str(port), *flags], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, PROCESS_START_TIMEOUT, "fhir-server serve to answer")
        # --insecure: open as asked; FHIR_AUTH_REQUIRED=true: a token is needed.
        # (60 s, as the live fixture's client: httpx's 5 s default is short when the 2 cores are shared)
        assert httpx.get(f"http://127.0.0.1:{port}/fhir/Patient", timeout=60).status_code == (200 if flags else 401)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=90)  # drains its output: a full pipe would block its exit

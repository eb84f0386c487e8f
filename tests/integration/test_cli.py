"""The fhir-server command as an operator runs it: migrate, load, serve (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from tests.conftest import Backend, _free_port, wait_until

CLI = [sys.executable, "-m", "fhir_server.cli"]


def run_cli(backend: Backend, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FHIR_DATABASE_URL": backend.settings.database_url}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_migrate_is_idempotent(backend: Backend, tmp_path: Path) -> None:
    first = run_cli(backend, "migrate", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "latest migration" in first.stdout
    assert run_cli(backend, "migrate", cwd=tmp_path).returncode == 0


def test_load_bundles_and_ndjson_prints_counts(backend: Backend, tmp_path: Path) -> None:
    backend.truncate()
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation", "status": "final",
                                                 "code": {"text": "x"}, "subject": {"reference": "urn:uuid:p1"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    (tmp_path / "b.json").write_bytes(orjson.dumps(bundle))
    lines = [orjson.dumps({"resourceType": "Practitioner", "id": f"pr{i}"}) for i in range(3)]
    (tmp_path / "p.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    out = run_cli(backend, "load", str(tmp_path / "b.json"), str(tmp_path / "p.ndjson"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Observation\t1" in out.stdout and "Practitioner\t3" in out.stdout and "total\t5" in out.stdout
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(orjson.dumps({"resourceType": "Patient", "birthDate": "soon"}) + b"\n")
    failed = run_cli(backend, "load", str(bad), cwd=tmp_path)
    assert failed.returncode == 1 and "Patient.birthDate" in failed.stdout


def test_serve_applies_migrations_and_answers(backend: Backend, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": backend.settings.database_url, "FHIR_OUTBOX_DISPATCHER": "false"}
    proc = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 60, "fhir-server serve to answer")
        meta = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata").json()
        assert meta["resourceType"] == "CapabilityStatement" and meta["fhirVersion"] == "4.0.1"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_default_database_is_sqlite_under_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    out = subprocess.run([*CLI, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "data" / "fhir.sqlite3").exists()

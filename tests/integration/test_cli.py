"""The fhir-server command as an operator runs it: migrate, load, serve (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from tests.conftest import PROCESS_START_TIMEOUT, Backend, _free_port, wait_until

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

        wait_until(up, PROCESS_START_TIMEOUT, "fhir-server serve to answer")
        meta = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=60).json()  # not httpx's 5 s
        assert meta["resourceType"] == "CapabilityStatement" and meta["fhirVersion"] == "4.0.1"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=90)  # drains its output: a full pipe would block its exit


def test_default_database_is_sqlite_under_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    out = subprocess.run([*CLI, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "data" / "fhir.sqlite3").exists()


def _count(backend: Backend, resource_type: str) -> int:
    from sqlalchemy import func, select

    from fhir_server.storage.models import RESOURCE

    with backend.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(RESOURCE).where(
            RESOURCE.c.resource_type == resource_type, RESOURCE.c.deleted.is_(False))).scalar_one())


def test_load_upsert_twice_creates_nothing_twice(backend: Backend, tmp_path: Path) -> None:
    backend.truncate()
    synthea_like = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6c2a5b3e-0d1f-4c59-9a3e-0b0d5f3f7a11",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:1f0c9e2a-7b7a-4b8e-9f3c-2a4d6e8f0b12",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:6c2a5b3e-0d1f-4c59-9a3e-0b0d5f3f7a11"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    (tmp_path / "s.json").write_bytes(orjson.dumps(synthea_like))
    org = {"resourceType": "Organization", "identifier": [{"system": "urn:org", "value": "lab-1"}], "name": "Lab"}
    (tmp_path / "o.ndjson").write_bytes(orjson.dumps(org) + b"\n")
    for _ in range(2):
        out = run_cli(backend, "load", "--upsert", str(tmp_path / "s.json"), str(tmp_path / "o.ndjson"), cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
    assert (_count(backend, "Patient"), _count(backend, "Observation"), _count(backend, "Organization")) == (1, 1, 1)
    # Without --upsert the same files are new resources each time (what the option is for).
    assert run_cli(backend, "load", str(tmp_path / "s.json"), cwd=tmp_path).returncode == 0
    assert _count(backend, "Patient") == 2


def test_load_missing_path_and_bad_settings_are_one_line(backend: Backend, tmp_path: Path) -> None:
    missing = run_cli(backend, "load", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"fhir-server load: no such file or directory: {tmp_path / 'nope.json'}"
    env = {**os.environ, "FHIR_DATABASE_URL": "sqlite:///x.sqlite3", "FHIR_ENVIRONMENT": "production"}
    bad = subprocess.run([*CLI, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "fhir-server: FHIR_ENVIRONMENT=production requires a PostgreSQL FHIR_DATABASE_URL"
    env = {**os.environ, "FHIR_AUTH_ACCESS_TOKEN_SECONDS": "5"}
    lifetime = subprocess.run([*CLI, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert lifetime.returncode == 2 and lifetime.stderr.count("\n") == 1
    assert "FHIR_AUTH_ACCESS_TOKEN_SECONDS must be between 60 and 1800" in lifetime.stderr


def test_load_migrates_a_fresh_database_first_without_alembic_noise(tmp_path: Path) -> None:
    env = {**os.environ, "FHIR_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}"}
    (tmp_path / "p.json").write_bytes(orjson.dumps({"resourceType": "Patient", "id": "fresh-1"}))
    out = subprocess.run([*CLI, "load", str(tmp_path / "p.json")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Patient\t1" in out.stdout
    assert "setup plugin" not in out.stderr and "Context impl" not in out.stderr

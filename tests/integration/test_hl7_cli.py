"""`fhir-server mllp` and `fhir-server hl7 stats|replay` as an operator runs them (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from interfaces.mllp.framing import encode
from interfaces.mllp.store import ERROR, PROCESSED, REJECTED, MessageStore
from tests.conftest import PROCESS_START_TIMEOUT, Backend, _free_port, wait_until
from tests.integration.test_mllp import GOLDEN, connect, read_acks, segment

CLI = [sys.executable, "-m", "fhir_server.cli"]


def _env(backend: Backend) -> dict[str, str]:
    return {**os.environ, "FHIR_DATABASE_URL": backend.settings.database_url,
            "FHIR_BINARY_STORE_URL": backend.settings.binary_store_url}


def test_mllp_command_serves_and_hl7_commands_report_and_replay(backend: Backend, tmp_path: Path) -> None:
    backend.truncate()
    port = _free_port()
    proc = subprocess.Popen([*CLI, "mllp", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                            env=_env(backend), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up() -> bool:
            try:
                connect(port).close()
                return True
            except OSError:
                return False

        wait_until(up, PROCESS_START_TIMEOUT, "the mllp listener")
        with connect(port) as sock:
            sock.sendall(encode((GOLDEN / "ADT_A04/register_outpatient.hl7").read_bytes()))
            [ack] = read_acks(sock, 1)
        assert segment(ack, "MSA")[1] == "AA"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=90)  # drains its output: a full pipe would block its exit

    store = MessageStore(backend.engine)
    row = store.receive(sender="X|Y", control_id="1", message_type="ADT^A08", version="2.5",
                        raw=(GOLDEN / "ADT_A08/update_patient.hl7").read_text())
    store.finish(row.pk, status=ERROR, ack=None, error="simulated failure")
    stats = subprocess.run([*CLI, "hl7", "stats"], cwd=tmp_path, env=_env(backend), capture_output=True,
                           text=True, timeout=120)
    reported = json.loads(stats.stdout)
    assert reported["counts"] == {ERROR: 1, PROCESSED: 1}, stats.stderr
    # The A04's Z-segment: processed, with a warning an operator can see
    assert reported["warnings"] == 1 and "ZPI[1]" in reported["latestWarnings"][0]["warning"]
    listed = subprocess.run([*CLI, "hl7", "stats", "--errors", "5"], cwd=tmp_path, env=_env(backend),
                            capture_output=True, text=True, timeout=120)
    [failed] = json.loads(listed.stdout)["errors"]
    assert failed["controlId"] == "1" and failed["error"] == "simulated failure" and failed["type"] == "ADT^A08"
    replay = subprocess.run([*CLI, "hl7", "replay", "--status", "error"], cwd=tmp_path, env=_env(backend),
                            capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout) == {PROCESSED: 1}
    assert store.counts() == {PROCESSED: 2}


def test_serve_starts_the_listener_beside_http(backend: Backend, tmp_path: Path) -> None:
    import httpx

    backend.truncate()
    http_port, mllp_port = _free_port(), _free_port()
    proc = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(http_port),
                             "--mllp-port", str(mllp_port)], cwd=tmp_path, env=_env(backend),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, PROCESS_START_TIMEOUT, "the HTTP server")
        with connect(mllp_port) as sock:
            sock.sendall(encode((GOLDEN / "ADT_A04/register_outpatient.hl7").read_bytes()))
            [ack] = read_acks(sock, 1)
        assert segment(ack, "MSA")[1] == "AA"
        found = httpx.get(f"http://127.0.0.1:{http_port}/fhir/Patient", params={"identifier": "ADT-100"},
                          timeout=60).json()
        assert found["total"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=90)  # drains its output: a full pipe would block its exit


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # a process of its own: on one database
def test_hl7_load_processes_a_file_of_batches_and_names_what_it_could_not(backend: Backend, tmp_path: Path) -> None:
    backend.truncate()
    batches = GOLDEN.parent / "hl7v2-batches"
    load = subprocess.run([*CLI, "hl7", "load", str(batches / "python_hl7_file1.hl7"),
                           str(batches / "python_hl7_bad_batch1.hl7")], cwd=tmp_path, env=_env(backend),
                          capture_output=True, text=True, timeout=120)
    whole, cut = (json.loads(line) for line in load.stdout.splitlines())
    # Two batches of three messages (MSH-15/16 NE: no ACK asked), the third a re-send of the first.
    assert whole["messages"] == 3 and whole["outcomes"] == {"none": 3} and "notProcessed" not in whole
    assert cut["messages"] == 1 and "(PID, PD1, NK1, PV1) not processed" in cut["notProcessed"]
    assert load.returncode == 1, load.stderr  # something was not processed: the operator must look
    assert MessageStore(backend.engine).counts() == {PROCESSED: 2, ERROR: 1, REJECTED: 1}

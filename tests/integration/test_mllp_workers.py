"""`fhir-server mllp --workers 2`: two listener processes on one port (real processes and sockets)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from interfaces.mllp.framing import encode
from interfaces.mllp.store import PROCESSED, MessageStore
from tests.conftest import PROCESS_START_TIMEOUT, Backend, _free_port, wait_until
from tests.integration.test_mllp import GOLDEN, connect, read_acks, segment

CLI = [sys.executable, "-m", "fhir_server.cli"]
MESSAGE = (GOLDEN / "ORU_R01/python_hl7_glucose_sn.hl7").read_bytes()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_two_listener_processes_share_the_port(backend: Backend, tmp_path: Path) -> None:
    backend.truncate()
    port = _free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": backend.settings.database_url,
           "FHIR_BINARY_STORE_URL": backend.settings.binary_store_url}
    proc = subprocess.Popen([*CLI, "mllp", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up() -> bool:  # both processes listening: two children, and the port answers
            try:
                connect(port).close()
            except OSError:
                return False
            return len(children(proc.pid)) >= 2

        wait_until(up, PROCESS_START_TIMEOUT, "two mllp listener processes")

        def send(n: int) -> str:
            message = MESSAGE.replace(b"|CNTRL-3456|", f"|W-{n}|".encode()).replace(b"555-44-4444", f"MRN-{n}".encode())
            with connect(port) as sock:
                sock.sendall(encode(message))
                return read_acks(sock, 1)[0]

        with ThreadPoolExecutor(8) as pool:
            acks = list(pool.map(send, range(16)))
        assert sorted(segment(a, "MSA")[1:3] for a in acks) == sorted(["AA", f"W-{n}"] for n in range(16))
        assert MessageStore(backend.engine).counts() == {PROCESSED: 16}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert children(proc.pid) == []


def test_workers_need_a_fixed_port(backend: Backend, tmp_path: Path) -> None:
    env = {**os.environ, "FHIR_DATABASE_URL": backend.settings.database_url}
    done = subprocess.run([*CLI, "mllp", "--port", "0", "--workers", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "fixed --port" in done.stderr

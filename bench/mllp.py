"""HL7 v2 end to end: ORU^R01 results (10 OBX each, distinct patients and orders) from concurrent MLLP
senders to a real ``fhir-server serve --mllp-port`` on SQLite and on PostgreSQL, until every message is
acknowledged; then the committed FHIR resources are counted. Prints a table and writes the ``mllp``
section of RESULTS.md.

    .venv/bin/python bench/mllp.py            # full run (a few minutes)
    .venv/bin/python bench/mllp.py --quick    # smoke run, does not touch RESULTS.md

Each sender is one MLLP connection that sends a message and waits for its ACK before the next (what an
analyser does); ACK latency is measured by the sender from the first byte sent to the whole ACK read.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or imported by another bench
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LOOPBACK,
    SOURCE_DIR,
    CpuMeter,
    bench_database,
    facts_markdown,
    fhir_server,
    free_port,
    log,
    machine_facts,
    ms,
    percentile,
    process_tree_cpu,
    table,
    write_section,
)

GOAL_MSG_PER_S = 150  # issue 19 goal 2 (it replaced the first HL7 v2 issue's 300)
GOAL_P95_MS = 50.0
START, END = b"\x0b", b"\x1c\x0d"

# (LOINC, name, unit, low, high, typical): a basic metabolic panel plus a few more, as analysers send them.
TESTS = [
    ("2345-7", "Glucose", "mg/dL", 70, 105, 95), ("2951-2", "Sodium", "mmol/L", 136, 145, 140),
    ("2823-3", "Potassium", "mmol/L", 3.5, 5.1, 4.2), ("2075-0", "Chloride", "mmol/L", 98, 107, 102),
    ("2028-9", "Carbon dioxide", "mmol/L", 22, 29, 25), ("3094-0", "Urea nitrogen", "mg/dL", 7, 20, 14),
    ("2160-0", "Creatinine", "mg/dL", 0.6, 1.2, 0.9), ("17861-6", "Calcium", "mg/dL", 8.6, 10.3, 9.4),
    ("2885-2", "Protein", "g/dL", 6.0, 8.3, 7.1), ("1751-7", "Albumin", "g/dL", 3.4, 5.4, 4.3),
]
GIVEN = ["Priya", "Anil", "Meera", "Rahul", "Sunita", "Vikram", "Lakshmi", "Arjun", "Kavya", "Rohan"]
FAMILY = ["Sharma", "Rao", "Iyer", "Patel", "Nair", "Reddy", "Gupta", "Menon", "Das", "Singh"]


def oru(n: int, run: str, rng: random.Random) -> bytes:
    """One realistic ORU^R01 (v2.5.1): a new patient, visit, order and specimen, 10 numeric results."""
    when = datetime(2026, 3, 5, 9, 0, tzinfo=UTC) + timedelta(seconds=n)
    ts = when.strftime("%Y%m%d%H%M%S") + "+0000"
    mrn, order = f"{run}M{n:07d}", f"{run}O{n:07d}"
    sex = rng.choice("MF")
    segments = [
        f"MSH|^~\\&|ANALYZER|CITYLAB|FHIR|HOSP|{ts}||ORU^R01^ORU_R01|{run}-{n:07d}|P|2.5.1||||||UNICODE UTF-8",
        f"PID|1||{mrn}^^^HOSP^MR||{rng.choice(FAMILY)}^{rng.choice(GIVEN)}||19{rng.randint(40, 99)}0"
        f"{rng.randint(1, 9)}1{rng.randint(0, 9)}|{sex}|||{rng.randint(1, 99)} MG Road^^Bengaluru^KA^560001^IND",
        f"PV1|1|O|OPD^12^1^HOSP||||1234^Rao^Anil^^^Dr|||MED||||||||||V{run}{n:07d}^^^HOSP^VN",
        f"ORC|RE|{order}^HIS|F{order}^CITYLAB||CM||||{ts}|||1234^Rao^Anil^^^Dr",
        f"OBR|1|{order}^HIS|F{order}^CITYLAB|24323-8^Comprehensive metabolic panel^LN|||{ts}|||||||||"
        f"1234^Rao^Anil^^^Dr||||||{ts}||CH|F",
    ]
    for i, (code, name, unit, low, high, typical) in enumerate(TESTS, start=1):
        value = round(typical * rng.uniform(0.8, 1.25), 1)
        flag = "H" if value > high else "L" if value < low else "N"
        segments.append(f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}^^UCUM|{low}-{high}|{flag}|||F|||{ts}")
    segments.append(f"SPM|1|S{order}&CITYLAB^S{order}&CITYLAB||119297000^Blood specimen^SCT"
                    f"|||||||||||||{ts}|{ts}")
    return "\r".join(segments).encode() + b"\r"


@dataclass
class SendResult:
    latencies: list[float] = field(default_factory=list)
    acks: dict[str, int] = field(default_factory=dict)  # MSA-1 -> count
    errors: list[str] = field(default_factory=list)


def read_frame(sock: socket.socket, buffer: bytearray) -> bytes:
    while True:
        end = buffer.find(END)
        if end >= 0:
            start = buffer.find(START)
            frame = bytes(buffer[start + 1:end])
            del buffer[:end + 2]
            return frame
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the ACK")
        buffer += chunk


def send_all(port: int, messages: list[bytes], senders: int, deadline_s: float) -> tuple[SendResult, float]:
    """``senders`` connections share the messages; each sends one, waits for its ACK, then the next."""
    result, lock = SendResult(), threading.Lock()
    next_index = iter(range(len(messages)))
    deadline = time.perf_counter() + deadline_s

    def sender() -> None:
        with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = bytearray()
            while time.perf_counter() < deadline:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    sock.sendall(START + messages[i] + END)
                    ack = read_frame(sock, buffer)
                except OSError as exc:
                    with lock:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                    return
                elapsed = time.perf_counter() - t0
                code = next((s.split("|")[1] for s in ack.decode().split("\r") if s.startswith("MSA|")), "?")
                with lock:
                    result.latencies.append(elapsed)
                    result.acks[code] = result.acks.get(code, 0) + 1
                    if code != "AA":
                        result.errors.append(ack.decode()[:300])

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result, time.perf_counter() - start


def committed(url: str, run: str) -> dict[str, int]:
    """What the run left in the database: messages by status and current resources by type."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            out = {f"hl7 {status}": int(n) for status, n in conn.execute(text(
                "SELECT status, count(*) FROM hl7_message WHERE control_id LIKE :p GROUP BY status"),
                {"p": f"{run}-%"})}
            for rtype, n in conn.execute(text(
                    "SELECT resource_type, count(*) FROM resource WHERE NOT deleted GROUP BY resource_type")):
                out[rtype] = int(n)
    finally:
        engine.dispose()
    return out


@dataclass
class Row:
    backend: str
    processes: int
    senders: int
    group_max: int
    messages: int
    result: SendResult
    wall: float
    server_cpu: float
    postgres_cpu: float | None
    counts: dict[str, int]
    expected_ok: bool

    def cells(self) -> list[str]:
        done = len(self.result.latencies)
        rate = done / self.wall if self.wall else 0.0
        pg = f"{self.postgres_cpu * 1000 / max(done, 1):.1f}" if self.postgres_cpu is not None else "-"
        return [self.backend, str(self.processes), str(self.group_max), str(self.senders), str(done),
                f"{self.wall:.1f}", f"**{rate:,.0f}**",
                ms(percentile(self.result.latencies, 50)), ms(percentile(self.result.latencies, 95)),
                f"{self.server_cpu * 1000 / max(done, 1):.1f}", pg,
                "yes" if self.expected_ok else "NO", str(len(self.result.errors))]


HEADERS = ["database", "listener processes", "group max", "senders", "messages ACKed", "wall s", "messages/s",
           "ACK p50 ms", "ACK p95 ms", "server CPU ms/message", "PostgreSQL CPU ms/message", "all committed", "errors"]


@contextmanager
def backend_url(backend: str) -> Iterator[str]:
    if backend == "postgresql":
        with bench_database("mllp") as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="fhir-bench-mllp-") as tmp:
            yield f"sqlite:///{tmp}/fhir.db"


@dataclass
class Listener:
    process: subprocess.Popen[bytes]


@contextmanager
def mllp_server(url: str, port: int, processes: int, group_max: int) -> Iterator[Any]:
    """``serve`` with the listener beside HTTP (one process), or ``fhir-server mllp --workers N``."""
    group = {"FHIR_MLLP_GROUP_MAX": str(group_max)}
    if processes == 1:
        with fhir_server(url, 1, extra_env={"FHIR_MLLP_PORT": str(port), "FHIR_MLLP_HOST": LOOPBACK,
                                            **group}) as server:
            yield server
        return
    env = {**os.environ, "FHIR_DATABASE_URL": url, **group}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "mllp", "--host", LOOPBACK, "--port",
                                 str(port), "--workers", str(processes)], cwd=SOURCE_DIR, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection((LOOPBACK, port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)  # polling a starting process, bounded by the deadline
            time.sleep(5)  # the other processes' start-up (they bind the same port a moment apart)
            yield Listener(proc)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def measure(backend: str, senders_list: list[int], count: int, warmup: int, deadline: float,
            facts: dict[str, str], processes: int = 1, group_max: int = 16) -> list[Row]:
    rows: list[Row] = []
    rng = random.Random(20261201)
    with backend_url(backend) as url:
        port = free_port()
        with mllp_server(url, port, processes, group_max) as server:
            if backend == "postgresql" and not facts:
                facts.update(machine_facts(url))
            log(f"{backend}: server up, MLLP on {port} ({processes} listener processes, groups of <= {group_max})")
            # Warm every process (SO_REUSEPORT spreads connections at random): many short connections.
            warm = max(warmup, 8 * processes)
            send_all(port, [oru(i, "W", rng) for i in range(warm)], 2 if processes == 1 else 4 * processes, deadline)
            for senders in senders_list:
                run = f"S{senders}"
                messages = [oru(i, run, rng) for i in range(count)]
                before = committed(url, run)
                meter = CpuMeter(server.process.pid, url) if backend == "postgresql" else None
                cpu0 = process_tree_cpu(server.process.pid)
                if meter:
                    meter.start()
                result, wall = send_all(port, messages, senders, deadline)
                if meter:
                    meter.stop()
                server_cpu = process_tree_cpu(server.process.pid) - cpu0
                after = committed(url, run)
                grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                done = len(result.latencies)
                # Each message: 1 Patient, 1 Encounter, 1 ServiceRequest, 1 Specimen, 1 DiagnosticReport,
                # 10 Observations, 1 Provenance; and its stored row ends processed.
                ok = (grew.get("hl7 processed", 0) == done == count and grew.get("Observation", 0) == 10 * count
                      and grew.get("DiagnosticReport", 0) == count and grew.get("Patient", 0) == count
                      and grew.get("Provenance", 0) == count)
                rows.append(Row(backend, processes, senders, group_max, count, result, wall, server_cpu,
                                meter.postgres if meter else None, grew, ok))
                print(table(HEADERS, [rows[-1].cells()]), flush=True)
                if not ok:
                    log(f"  committed: {grew}")
                for error in result.errors[:3]:
                    log(f"  error: {error}")
    return rows


def render(rows: list[Row], facts: dict[str, str], args: argparse.Namespace) -> str:
    best = max(rows, key=lambda r: len(r.result.latencies) / r.wall if r.wall else 0)
    rate = len(best.result.latencies) / best.wall
    four = [r for r in rows if r.senders == 4]
    p95 = min((percentile(r.result.latencies, 95) * 1000 for r in four), default=float("nan"))
    met = rate >= GOAL_MSG_PER_S and p95 < GOAL_P95_MS
    return f"""## HL7 v2 over MLLP: ORU^R01 end to end (`bench/mllp.py`)

{facts_markdown(facts)}
- the machine was shared with other work (see the load average): wall-time numbers move with it, CPU ms
  per message much less

Each message is a v2.5.1 ORU^R01 with PID, PV1, ORC, OBR, 10 OBX (NM, LOINC, UCUM units, reference ranges,
flags) and SPM, each for a new patient and order; it becomes one FHIR transaction of 16 resources (Patient
by conditional create on PID-3, Encounter, ServiceRequest, Specimen, DiagnosticReport, 10 Observations,
Provenance). A real `fhir-server serve --workers 1` with `FHIR_MLLP_PORT` (1 listener process), or
`fhir-server mllp --workers N` (N processes sharing the port; PostgreSQL only) runs on a fresh database; after
{args.warmup} warm-up messages, each row sends {args.messages} messages from that many MLLP connections, each
sending one message and waiting for its ACK before the next. "all committed" checks the database afterwards:
every message `processed`, and exactly the expected new Patients, DiagnosticReports, Observations and
Provenances. Server CPU is the server process's user+system time per message; PostgreSQL CPU that of the
backends serving the bench database. "group max" is `FHIR_MLLP_GROUP_MAX`: messages arriving together on
different connections of one listener process are applied as one transaction, up to that many (group
commit, interfaces/mllp/group.py); the rows with 1 are the same server without it.

Goal: >= {GOAL_MSG_PER_S} messages/s with ACK p95 < {GOAL_P95_MS:.0f} ms from 4 senders. Best measured:
**{rate:,.0f} messages/s** ({best.backend}, {best.processes} listener processes, {best.senders} senders);
best ACK p95 with 4 senders {p95:.1f} ms —
goal {"met" if met else "NOT met"}.

{table(HEADERS, [r.cells() for r in rows])}

Caveats: the senders run on the same 2 cores as the server (and PostgreSQL); the test PostgreSQL runs
with fsync=off and synchronous_commit=off (scripts/postgres.sh); SQLite runs in WAL mode with
synchronous=NORMAL (the server's settings).

Reading: a group forms only from messages that arrive while another group is being applied, so with 4
senders one listener process applies groups of about 2 (4 senders over 2 processes: mostly 1); compare
the server + PostgreSQL CPU of the "group max" 16 and 1 rows at 4 senders. Larger groups (more
concurrent senders) save more: see the group-size table of `bench/profile_mllp.py`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--senders", default="1,4", help="concurrent MLLP connections (comma-separated)")
    parser.add_argument("--processes", default="1,2",
                        help="listener processes on PostgreSQL (comma-separated; 2+ = fhir-server mllp --workers)")
    parser.add_argument("--messages", type=int, default=400, help="messages per row")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=180.0, help="deadline per row")
    parser.add_argument("--group-max", type=int, default=16, help="FHIR_MLLP_GROUP_MAX of the server")
    parser.add_argument("--no-ungrouped", action="store_true",
                        help="skip the PostgreSQL rows with group commit off (FHIR_MLLP_GROUP_MAX=1, 4 senders)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; RESULTS.md is not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.warmup = 40, 4
    facts: dict[str, str] = {}
    rows: list[Row] = []
    for backend in args.backends.split(","):
        # SQLite serialises writers (BEGIN IMMEDIATE), so more listener processes only add contention.
        for processes in [int(p) for p in args.processes.split(",")] if backend == "postgresql" else [1]:
            rows += measure(backend, [int(s) for s in args.senders.split(",")], args.messages, args.warmup,
                            args.max_seconds, facts, processes, args.group_max)
            if backend == "postgresql" and not args.no_ungrouped and args.group_max != 1:
                rows += measure(backend, [4], args.messages, args.warmup, args.max_seconds, facts, processes, 1)
    if not facts:
        with bench_database("mllp_facts") as url:
            facts.update(machine_facts(url))
    report = render(rows, facts, args)
    print(report)
    if not args.quick:
        write_section("mllp", report)
        log("wrote the mllp section of bench/RESULTS.md")
    return 0 if all(r.expected_ok and not r.result.errors for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

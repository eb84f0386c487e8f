"""What the audit trail costs: read and create latency and CPU with FHIR_AUDIT_ENABLED true vs false, on
PostgreSQL, through a real ``fhir-server serve --workers 1`` on loopback with one client. CPU is counted until
the background writer has stored every queued AuditEvent, so the reads' deferred cost is included. Prints a
table and writes the ``audit`` section of RESULTS.md (not with --quick).

    .venv/bin/python bench/audit.py            # about 2 minutes
    .venv/bin/python bench/audit.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CpuMeter,
    bench_database,
    facts_markdown,
    fhir_server,
    libpq,
    log,
    machine_facts,
    ms,
    percentile,
    run_load,
    table,
    write_section,
)

HEADERS = ["audit", "interaction", "requests", "p50 ms", "p95 ms", "server CPU ms/req", "PostgreSQL CPU ms/req",
           "AuditEvents written"]


def audit_count(url: str) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM resource WHERE resource_type = 'AuditEvent'").fetchone()
    return int(row[0]) if row else 0


def measure(url: str, enabled: bool, reads: int, creates: int) -> list[list[str]]:
    rows: list[list[str]] = []
    with fhir_server(url, 1, extra_env={"FHIR_AUDIT_ENABLED": str(enabled).lower(), "FHIR_AUTH_REQUIRED": "false"}) \
            as server, httpx.Client(base_url=server.base + "/", timeout=60) as http:
        ids = []
        for i in range(50):
            r = http.post("Patient", json={"resourceType": "Patient", "name": [{"family": f"Bench{i}"}]})
            r.raise_for_status()
            pid = r.json()["id"]
            r = http.post("Observation", json={"resourceType": "Observation", "status": "final",
                                               "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}})
            ids.append(r.json()["id"])
        for i in range(300):  # warm-up: statement caches, pool, the audit writer
            http.get(f"Observation/{ids[i % len(ids)]}").raise_for_status()
        deadline = time.monotonic() + 60
        while enabled and audit_count(url) < 2 * len(ids) + 300 and time.monotonic() < deadline:
            time.sleep(0.05)  # the set-up's and warm-up's AuditEvents are not the measured requests'
        jobs = {
            "read": [lambda c, i=random.choice(ids): _ok(c.get(f"Observation/{i}")) for _ in range(reads)],
            "create": [lambda c, n=n: _ok(c.post("Observation", json={
                "resourceType": "Observation", "status": "final", "code": {"text": f"c{n}"},
                "subject": {"reference": f"Observation/{ids[0]}"}})) for n in range(creates)],
        }
        for name, batch in jobs.items():
            before = audit_count(url)
            meter = CpuMeter(server.process.pid, url)
            meter.start()
            result = run_load(server.base + "/", batch, 1, max_seconds=300)
            if enabled:  # until the background writer has caught up: its CPU belongs to these requests
                deadline = time.monotonic() + 60
                while audit_count(url) - before < len(batch) and time.monotonic() < deadline:
                    time.sleep(0.05)
            meter.stop()
            n = max(1, result.jobs_done)
            rows.append(["on" if enabled else "off", name, str(result.jobs_done), ms(percentile(result.latencies, 50)),
                         ms(percentile(result.latencies, 95)), f"{meter.server / n * 1000:.2f}",
                         f"{meter.postgres / n * 1000:.2f}", str(audit_count(url) - before)])
            log(" | ".join(rows[-1]))
    return rows


def summary(rows: list[list[str]]) -> str:
    """What audit adds per request, from the rows (columns as HEADERS)."""
    cost = {(r[0], r[1]): (float(r[5]), float(r[6])) for r in rows}
    parts = []
    for name in ("read", "create"):
        if ("on", name) in cost and ("off", name) in cost:
            (on_s, on_p), (off_s, off_p) = cost["on", name], cost["off", name]
            parts.append(f"a {name} {on_s - off_s:+.2f} ms server CPU and {on_p - off_p:+.2f} ms PostgreSQL CPU")
    return ("With audit on: " + "; ".join(parts) + ". A read's AuditEvent is written by the background writer, "
            "in batches (it waits up to 0.1 s for a batch to gather) and without StructureDefinition validation "
            "(server-built, shape-tested once); a create's is in its own transaction. Before these two changes "
            "(commit fb329686fd19, 2026-12-01, load ~10): a read +2.95 ms server / +1.49 ms PostgreSQL CPU, "
            "a create +2.52 / +1.50.")


def _ok(resp: httpx.Response) -> int:
    resp.raise_for_status()
    return 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reads, creates = (200, 50) if args.quick else (3000, 500)
    rows: list[list[str]] = []
    with bench_database("audit") as url:
        facts = machine_facts(url)
        for enabled in (False, True):
            rows += measure(url, enabled, reads, creates)
    text = table(HEADERS, rows) + "\n\n" + summary(rows)
    print(text)
    if not args.quick:
        write_section("audit", "## AuditEvent cost (`bench/audit.py`)\n\nOne client, `serve --workers 1`, PostgreSQL; "
                               "CPU counted until the background writer has stored every queued event. The "
                               "machine is shared, so compare CPU per request rather than wall time.\n\n"
                      + facts_markdown(facts) + "\n\n" + text)


if __name__ == "__main__":
    main()

"""Many hospitals on one PostgreSQL (issue 13 item 7): tenant creation time, the memory of one server process
serving all of them, and read/search latency on the last tenant against the default one.

Each tenant is a schema migrated to the current head (created in this process with the platform's store, as
`fhir-server tenants create` does); one `fhir-server serve` process then serves every tenant on its one
connection pool. Usage: .venv/bin/python bench/tenants.py [--tenants 200] [--reads 1000] [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    bench_database,
    facts_markdown,
    fhir_server,
    log,
    machine_facts,
    ms,
    percentile,
    table,
    write_section,
)

JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def create_tenants(url: str, count: int) -> list[float]:
    from fhir_server.config import Settings
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade
    from fhir_server.tenancy.store import TenantStore

    settings = Settings(database_url=url)
    engine = make_engine(settings)
    upgrade(engine)
    store = TenantStore(engine, settings)
    seconds: list[float] = []
    for i in range(count):
        _tenant, took = store.create(f"h{i:03d}", f"Hospital {i}")
        seconds.append(took)
        if (i + 1) % 25 == 0:
            log(f"{i + 1} tenants created (last {took:.2f} s)")
    engine.dispose()
    return seconds


def load_patients(http: httpx.Client, base: str, n: int) -> list[str]:
    entries = [{"request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": f"Bench{i % 50}", "given": [f"G{i}"]}],
                             "gender": "female" if i % 2 else "male", "birthDate": f"19{50 + i % 50}-01-01"}}
               for i in range(n)]
    r = http.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, headers=JSON)
    r.raise_for_status()
    return [e["response"]["location"].split("/")[1] for e in r.json()["entry"]]


def timed(http: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    r = http.get(url, headers=JSON)
    took = time.perf_counter() - started
    r.raise_for_status()
    return took


def measure(http: httpx.Client, bases: dict[str, str], ids: dict[str, list[str]], reads: int) -> list[list[Any]]:
    """Reads and searches interleaved between the tenants, so machine load falls on both alike."""
    samples: dict[tuple[str, str], list[float]] = {(t, k): [] for t in bases for k in ("read", "search")}
    rng = random.Random(7)
    for _ in range(reads):
        for tenant, base in bases.items():
            samples[(tenant, "read")].append(timed(http, f"{base}/Patient/{rng.choice(ids[tenant])}"))
            samples[(tenant, "search")].append(timed(http, f"{base}/Patient?family=Bench{rng.randrange(50)}"))
    return [[tenant, kind, len(v), ms(percentile(v, 50)), ms(percentile(v, 95))]
            for (tenant, kind), v in samples.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--reads", type=int, default=1000, help="reads and searches per tenant measured")
    parser.add_argument("--patients", type=int, default=200, help="patients in each measured tenant")
    parser.add_argument("--quick", action="store_true", help="10 tenants, 100 reads; RESULTS.md untouched")
    args = parser.parse_args()
    if args.quick:
        args.tenants, args.reads = 10, 100
    started = time.monotonic()
    with bench_database("tenants") as url:
        facts = machine_facts(url)
        log(f"creating {args.tenants} tenants")
        created = create_tenants(url, args.tenants)
        last = f"h{args.tenants - 1:03d}"
        with fhir_server(url, 1) as server, httpx.Client(timeout=120) as http:
            pid = server.process.pid
            base = server.base
            rss_start = rss_mib(pid)
            bases = {"default": base, last: f"{base}/{last}"}
            ids = {t: load_patients(http, b, args.patients) for t, b in bases.items()}
            rss_two = rss_mib(pid)
            log("touching every tenant (a create and a search each)")
            touched = time.perf_counter()
            for i in range(args.tenants):
                tb = f"{base}/h{i:03d}"
                http.post(f"{tb}/Patient", json={"resourceType": "Patient"}, headers=JSON).raise_for_status()
                http.get(f"{tb}/Patient?_count=1", headers=JSON).raise_for_status()
            touch_seconds = time.perf_counter() - touched
            rss_all = rss_mib(pid)
            log(f"measuring {args.reads} reads and searches on default and {last}")
            rows = measure(http, bases, ids, args.reads)
            rss_end = rss_mib(pid)
    body = f"""## Many tenants on one PostgreSQL (`bench/tenants.py`)

{facts_markdown(facts)}

{args.tenants} tenants, each its own schema at the current migration head, created one after another with the
platform's store (what `fhir-server tenants create` runs). Then one `fhir-server serve` process (1 worker, one
connection pool of FHIR_DB_POOL_SIZE for every tenant) served them all: {args.patients} Patients were loaded
into the default tenant and into the last one ({last}), every tenant got a create and a search (its services
were made when the server started), then {args.reads} reads of a random Patient and {args.reads} name searches were
timed on the default and on {last}, interleaved, one client, keep-alive.

Tenant creation: total {sum(created):.0f} s, p50 {percentile(created, 50):.2f} s, p95 {percentile(created, 95):.2f} s,
max {max(created):.2f} s per tenant.

Server memory (RSS of the one process; `serve` makes every active tenant's services as it starts):
{rss_start:.0f} MiB at start, {rss_two:.0f} MiB serving 2 tenants,
{rss_all:.0f} MiB after all {args.tenants} (first requests to all took {touch_seconds:.1f} s), {rss_end:.0f} MiB at the
end: {(rss_all - rss_two) / max(1, args.tenants - 2) * 1024:.0f} KiB per further tenant.

{table(["tenant", "request", "n", "p50 ms", "p95 ms"], rows)}

Whole bench took {(time.monotonic() - started) / 60:.1f} minutes; the bench database was dropped afterwards."""
    print(body)
    if not args.quick:
        write_section("tenants", body)


if __name__ == "__main__":
    main()

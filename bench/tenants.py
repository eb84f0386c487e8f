"""Many hospitals on one PostgreSQL (issue 13 item 7): tenant creation time, the memory of one server process
serving all of them, and read/search latency and cost on the last tenant against the default one.

Each tenant is a schema migrated to the current head (created in this process with the platform's store, as
`fhir-server tenants create` does). First the FHIR core in this process, no HTTP: reads and searches
interleaved between the default tenant, the last tenant, and the last tenant through the engine as it was
before (BEGIN, schema and status, query, COMMIT), with the round trips of each counted from libpq's protocol
trace. Then one `fhir-server serve` process serves every tenant on its one connection pool, over HTTP.
Usage: .venv/bin/python bench/tenants.py [--tenants 200] [--reads 300] [--core 1000] [--full] [--quick]
(about 3 minutes; --full: 1,000 HTTP and 3,000 core requests per tenant and kind).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    CpuMeter,
    bench_database,
    facts_markdown,
    fhir_server,
    log,
    machine_facts,
    ms,
    percentile,
    process_tree_cpu,
    table,
    write_section,
)

COUNTED = 50  # requests per tenant and kind whose round trips are counted
JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, USS): USS is the memory only this process holds (private pages), what one more process costs."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0])
    return fields.get("Rss", 0) / 1024, (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024


def settle(pid: int, deadline: float = 0.5) -> None:
    """Until the server spends no CPU for 0.1 s (its background work for the last requests done), at most
    ``deadline`` seconds."""
    end = time.monotonic() + deadline
    last = process_tree_cpu(pid)
    while time.monotonic() < end:
        time.sleep(0.1)
        now = process_tree_cpu(pid)
        if now == last:
            return
        last = now


def server_connections(url: str) -> int:
    """Connections to the bench database other than this one's (the server's pool)."""
    import psycopg
    from common import libpq

    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()").fetchone()
    return int(row[0]) if row is not None else 0


class RoundTrips:
    """Round trips to PostgreSQL, counted from libpq's protocol trace of every pooled connection: each simple
    Query and each Sync is one wait for the server."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.file = tempfile.NamedTemporaryFile("w+", suffix=".trace")  # noqa: SIM115 (closed in close())
        self.on = False

        @event.listens_for(engine, "checkout")
        def _checkout(dbapi: Any, _record: Any, _proxy: Any) -> None:
            if self.on:
                dbapi.pgconn.trace(self.file.fileno())

        @event.listens_for(engine, "checkin")
        def _checkin(dbapi: Any, _record: Any) -> None:
            if dbapi is not None and self.on:
                dbapi.pgconn.untrace()

    def count(self, work: Callable[[], Any]) -> int:
        self.file.seek(0)
        self.file.truncate()
        self.on = True
        try:
            work()
        finally:
            self.on = False
        self.file.seek(0)
        return sum(1 for line in self.file if "\tF\t" in line and ("\tQuery\t" in line or "\tSync" in line))

    def close(self) -> None:
        self.file.close()


def core_requests(url: str, tenant: str, n: int, patients: int) -> list[list[Any]]:
    """The FHIR core in this process (no HTTP, no audit): reads and searches interleaved between the default
    tenant, ``tenant`` as the server serves it, and ``tenant`` through the engine as it was before."""
    import orjson

    from fhir_server.config import Settings
    from fhir_server.rest.request import FhirRequest
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.access import as_system
    from fhir_server.storage.database import make_engine
    from fhir_server.tenancy.engines import tenant_engine, tenant_settings
    from fhir_server.tenancy.stacks import STATUS_AGE
    from fhir_server.tenancy.store import TenantStore

    settings = Settings(database_url=url, audit_enabled=False, terminology_preload=False)
    engine = make_engine(settings)
    store = TenantStore(engine, settings)
    trips = RoundTrips(engine)
    own = tenant_settings(settings, tenant)
    servers = {"default": FhirServer(settings, engine),
               tenant: FhirServer(own, tenant_engine(engine, settings, tenant, serving=True, view=store,
                                                     status_age=STATUS_AGE)),
               f"{tenant} (before)": FhirServer(own, tenant_engine(engine, settings, tenant, serving=True))}
    access = as_system("bench: the FHIR core's own cost")
    ids: dict[str, list[str]] = {}
    for name in ("default", tenant):
        entries = [{"request": {"method": "POST", "url": "Patient"},
                    "resource": {"resourceType": "Patient", "name": [{"family": f"Core{i % 50}"}]}}
                   for i in range(patients)]
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        resp = servers[name].handle(FhirRequest("POST", "", headers={"content-type": "application/fhir+json"},
                                                body=body, access=access))
        assert resp.resource is not None, resp
        ids[name] = [e["response"]["location"].split("/")[1] for e in resp.resource["entry"]]
    ids[f"{tenant} (before)"] = ids[tenant]
    rng = random.Random(11)

    def request(name: str, kind: str) -> FhirRequest:
        if kind == "read":
            return FhirRequest("GET", f"Patient/{rng.choice(ids[name])}", access=access)
        return FhirRequest("GET", "Patient", [("family", f"Core{rng.randrange(50)}")], access=access)

    rows: list[list[Any]] = []
    for kind, count in (("read", n), ("search", max(1, n // 10))):
        wall: dict[str, list[float]] = {name: [] for name in servers}
        cpu = dict.fromkeys(servers, 0.0)
        for name, server in servers.items():  # warm: compiled statements, the status view, the guard's names
            server.handle(request(name, kind))
        for _ in range(count):
            for name, server in servers.items():
                req = request(name, kind)
                started, cpu_started = time.perf_counter(), time.process_time()
                assert server.handle(req).status == 200
                wall[name].append(time.perf_counter() - started)
                cpu[name] += time.process_time() - cpu_started
        counted = COUNTED
        for name, server in servers.items():
            def repeat(server: FhirServer = server, name: str = name, kind: str = kind) -> None:
                for _ in range(COUNTED):
                    server.handle(request(name, kind))

            trips_total = trips.count(repeat)
            rows.append([name, kind, count, ms(percentile(wall[name], 50)), ms(percentile(wall[name], 95)),
                         f"{cpu[name] / count * 1000:.2f}", f"{trips_total / counted:.1f}"])
    trips.close()
    engine.dispose()
    return rows


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


def measure(http: httpx.Client, bases: dict[str, str], ids: dict[str, list[str]], reads: int,
            meter: CpuMeter) -> list[list[Any]]:
    """Reads and searches interleaved between the tenants, so machine load falls on both alike: wall time per
    request, one at a time; CPU of the server and of PostgreSQL per request, in blocks of 25."""
    samples: dict[tuple[str, str], list[float]] = {(t, k): [] for t in bases for k in ("read", "search")}
    cpu = {key: [0.0, 0.0] for key in samples}
    rng = random.Random(7)

    def url(tenant: str, kind: str) -> str:
        base = bases[tenant]
        if kind == "read":
            return f"{base}/Patient/{rng.choice(ids[tenant])}"
        return f"{base}/Patient?family=Bench{rng.randrange(50)}"

    for _ in range(reads):
        for tenant in bases:
            for kind in ("read", "search"):
                samples[(tenant, kind)].append(timed(http, url(tenant, kind)))
    block, rounds = 25, max(2, reads // 50)
    keys = list(cpu)
    for round_ in range(rounds):
        for key in keys[round_ % len(keys):] + keys[:round_ % len(keys)]:  # each kind after each other in turn
            settle(meter.server_pid)  # the work the previous block left (audit writes) is not this block's
            meter.start()
            for _ in range(block):
                timed(http, url(*key))
            settle(meter.server_pid)
            meter.stop()
            cpu[key][0] += meter.server
            cpu[key][1] += meter.postgres
    blocks = rounds * block
    return [[tenant, kind, len(v), ms(percentile(v, 50)), ms(percentile(v, 95)),
             f"{cpu[(tenant, kind)][0] / blocks * 1000:.2f}", f"{cpu[(tenant, kind)][1] / blocks * 1000:.2f}"]
            for (tenant, kind), v in samples.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--reads", type=int, default=300, help="HTTP reads and searches per tenant measured")
    parser.add_argument("--core", type=int, default=1000, help="in-process reads per tenant (searches: a tenth)")
    parser.add_argument("--patients", type=int, default=200, help="patients in each measured tenant")
    parser.add_argument("--full", action="store_true", help="1,000 HTTP and 3,000 in-process reads")
    parser.add_argument("--quick", action="store_true", help="10 tenants, 100 reads; RESULTS.md untouched")
    args = parser.parse_args()
    if args.full:
        args.reads, args.core = 1000, 3000
    if args.quick:
        args.tenants, args.reads, args.core = 10, 100, 300
    started = time.monotonic()
    with bench_database("tenants") as url:
        facts = machine_facts(url)
        log(f"creating {args.tenants} tenants")
        created = create_tenants(url, args.tenants)
        last = f"h{args.tenants - 1:03d}"
        log(f"FHIR core in process: {args.core} reads, {args.core // 10} searches on default and {last}")
        core_rows = core_requests(url, last, args.core, args.patients)
        with fhir_server(url, 1) as server, httpx.Client(timeout=120) as http:
            pid = server.process.pid
            base = server.base
            mem_start = memory_mib(pid)
            bases = {"default": base, last: f"{base}/{last}"}
            ids = {t: load_patients(http, b, args.patients) for t, b in bases.items()}
            mem_two = memory_mib(pid)
            log("touching every tenant (a create and a search each)")
            touched = time.perf_counter()
            for i in range(args.tenants):
                tb = f"{base}/h{i:03d}"
                http.post(f"{tb}/Patient", json={"resourceType": "Patient"}, headers=JSON).raise_for_status()
                http.get(f"{tb}/Patient?_count=1", headers=JSON).raise_for_status()
            touch_seconds = time.perf_counter() - touched
            mem_all = memory_mib(pid)
            log(f"measuring {args.reads} reads and searches on default and {last} over HTTP")
            rows = measure(http, bases, ids, args.reads, CpuMeter(pid, url))
            mem_end = memory_mib(pid)
            connections = server_connections(url)
    per_tenant = (mem_all[0] - mem_two[0]) / max(1, args.tenants - 2) * 1024
    body = f"""## Many tenants on one PostgreSQL (`bench/tenants.py`)

{facts_markdown(facts)}

{args.tenants} tenants, each its own schema at the current migration head, created one after another with the
platform's store (what `fhir-server tenants create` runs).

Tenant creation: total {sum(created):.0f} s, p50 {percentile(created, 50):.2f} s, p95 {percentile(created, 95):.2f} s,
max {max(created):.2f} s per tenant.

**The FHIR core in one process, no HTTP** ({args.patients} Patients in the default tenant and in {last}; no
audit): a read of a random Patient and a name search, interleaved between the default tenant, {last} as the
server serves it, and {last} through the engine as it was before this change (every read a transaction:
`BEGIN` with the schema and status in one trip, the query, `COMMIT`). CPU is this process's per request;
round trips are counted from libpq's protocol trace over 50 more requests (each simple Query or Sync is one).

{table(["tenant", "request", "n", "p50 ms", "p95 ms", "CPU ms/request", "round trips/request"], core_rows)}

**Over HTTP**: one `fhir-server serve` process (1 worker, one connection pool of FHIR_DB_POOL_SIZE for every
tenant) served them all: {args.patients} Patients loaded into the default tenant and into {last}, every tenant got
a create and a search, then {args.reads} reads of a random Patient and {args.reads} name searches were timed on
the default and on {last}, interleaved, one client, keep-alive. CPU per request (the server process and the
PostgreSQL backends) from blocks of 25 requests, each kind first in turn, the server idle before and after each.

{table(["tenant", "request", "n", "p50 ms", "p95 ms", "server CPU ms", "PostgreSQL CPU ms"], rows)}

Server memory (RSS / USS of the one process, MiB; `serve` makes every active tenant's services as it starts):
{mem_start[0]:.0f} / {mem_start[1]:.0f} at start, {mem_two[0]:.0f} / {mem_two[1]:.0f} serving 2 tenants,
{mem_all[0]:.0f} / {mem_all[1]:.0f} after all {args.tenants} (first requests to all took {touch_seconds:.1f} s),
{mem_end[0]:.0f} / {mem_end[1]:.0f} at the end: {per_tenant:.0f} KiB RSS per further tenant. One connection pool
for all of them (a tenant's engine is an option view of the default one): {connections} connections to the
database at the end, serving {args.tenants + 1} tenants.

Whole bench took {(time.monotonic() - started) / 60:.1f} minutes; the bench database was dropped afterwards.
Run: `.venv/bin/python bench/tenants.py` ({'--full' if args.full else 'default mode'})."""
    print(body)
    if not args.quick:
        write_section("tenants", body)


if __name__ == "__main__":
    main()

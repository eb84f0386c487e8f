"""Where a read's, a search's and a ``metadata``'s CPU goes: the whole HTTP stack (uvicorn, our middleware,
auth, the FHIR core, audit, SQLAlchemy, psycopg, serialisation) in this process under yappi (CPU clock,
every thread: the event loop and the thread pool), on PostgreSQL, over loopback HTTP from a client in a
child process. Own CPU time is summed by area, so the shares add up to the whole; key functions are listed
by cumulative time. Writes the ``profile-read`` section of RESULTS.md.

    .venv/bin/python bench/profile_read.py [--requests 1000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_database, facts_markdown, free_port, log, machine_facts, table, write_section

# (area, path fragment) in order: the first fragment found in a function's file names its area.
AREAS = [
    ("audit", "/fhir_server/audit/"),
    ("auth", "/fhir_server/api/auth.py"),
    ("auth", "/fhir_server/auth/"),
    ("middleware (access log, tenancy, metrics)", "/fhir_server/api/access_log.py"),
    ("middleware (access log, tenancy, metrics)", "/fhir_server/api/tenants.py"),
    ("middleware (access log, tenancy, metrics)", "/fhir_server/api/metrics.py"),
    ("middleware (access log, tenancy, metrics)", "/prometheus_client/"),
    ("middleware (access log, tenancy, metrics)", "/fhir_server/logs.py"),
    ("middleware (access log, tenancy, metrics)", "/logging/"),
    ("FHIR endpoint (api/fhir.py, negotiation)", "/fhir_server/api/"),
    ("search (parser, planner, SQL)", "/fhir_server/search/"),
    ("storage (repository, unit of work)", "/fhir_server/storage/"),
    ("FHIR core (rest/)", "/fhir_server/rest/"),
    ("FHIR core, other", "/fhir_server/"),
    ("settings (pydantic)", "/pydantic"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("psycopg (driver, socket)", "/psycopg"),
    ("uvicorn + h11/httptools", "/uvicorn/"),
    ("uvicorn + h11/httptools", "/h11/"),
    ("uvicorn + h11/httptools", "/httptools/"),
    ("Starlette routing, responses", "/starlette/"),
    ("Starlette routing, responses", "/fastapi/"),
    ("asyncio, threads, anyio", "/asyncio/"),
    ("asyncio, threads, anyio", "/anyio/"),
    ("asyncio, threads, anyio", "/threading.py"),
    ("asyncio, threads, anyio", "/concurrent/"),
    ("asyncio, threads, anyio", "/queue.py"),
    ("asyncio, threads, anyio", "/selectors.py"),
]
KEY_FUNCTIONS = ["fhir_endpoint", "bearer_access", "handle", "run", "route", "read", "search", "render",
                 "capability_statement", "execute", "commit", "dumps", "__call__"]

CLIENT = r"""
import sys, httpx
base, paths = sys.argv[1], sys.argv[2:]
with httpx.Client(base_url=base, timeout=60) as c:
    for p in open(paths[0]).read().split():
        r = c.get(p)
        assert r.status_code == 200, (p, r.status_code, r.text[:200])
"""


def area_of(file: str) -> str:
    for area, fragment in AREAS:
        if fragment in file:
            return area
    return "other (stdlib, orjson, ...)" if file.startswith(("/usr", sys.base_prefix)) or "site-packages" in file \
        else "other"


def load_data(base: str, patients: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Patients with 20 Observations each (bench/peer.py's Bundles); returns read and search paths."""
    import httpx
    from peer import Patient, ingest_job, patient_bundle

    made: list[Patient] = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for _ in range(patients):
            ingest_job(patient_bundle(rng, 20), made)(client)
    reads = [f"Observation/{rng.choice(p.observation_ids)}" for p in made for _ in range(5)]
    searches = [f"Observation?patient=Patient/{p.id}&code=http://loinc.org|{rng.choice(p.codes)}&date=ge2024-01-15"
                for p in made for _ in range(5)]
    return reads, searches


def profile(base: str, paths: list[str]) -> tuple[float, dict[str, float], dict[str, float], float]:
    """Run the client child over ``paths`` with yappi on; (CPU seconds, own seconds by area, key cumulative,
    own seconds of the audit writer's thread)."""
    import yappi

    list_file = Path(f"/tmp/profile-read-{os.getpid()}.txt")
    list_file.write_text("\n".join(paths))
    yappi.clear_stats()
    yappi.set_clock_type("cpu")
    cpu0 = time.process_time()
    yappi.start(builtins=True, profile_threads=True)
    subprocess.run([sys.executable, "-c", CLIENT, base, str(list_file)], check=True)
    yappi.stop()
    cpu = time.process_time() - cpu0
    list_file.unlink()
    by_area: dict[str, float] = {}
    key: dict[str, float] = {}
    writers = {t.ident for t in threading.enumerate() if t.name == "audit-writer"}
    audit_writer = sum(f.tsub for t in yappi.get_thread_stats() if t.tid in writers
                       for f in yappi.get_func_stats(filter={"ctx_id": t.id}))
    stats = yappi.get_func_stats()
    if os.environ.get("PROFILE_READ_TOP"):
        stats.sort("tsub").print_all(out=sys.stderr, columns={0: ("name", 60), 1: ("ncall", 8), 2: ("tsub", 8),
                                                               3: ("ttot", 8), 4: ("tavg", 8)})
    for stat in stats:
        area = area_of(stat.module or "")
        by_area[area] = by_area.get(area, 0.0) + stat.tsub
        if stat.name in KEY_FUNCTIONS and "/fhir_server/" in (stat.module or ""):
            where = stat.module.split("/fhir_server/", 1)[1]
            name = f"{where}:{stat.name}"
            key[name] = key.get(name, 0.0) + stat.ttot
    return cpu, by_area, key, audit_writer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=500, help="requests per kind")
    parser.add_argument("--quick", action="store_true", help="smoke run; RESULTS.md is not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.patients, args.requests = 10, 50
    rng = random.Random(7)
    with bench_database("profile_read") as url:
        facts = machine_facts(url)
        port = free_port()
        os.environ.update({"FHIR_DATABASE_URL": url, "FHIR_BASE_URL": f"http://127.0.0.1:{port}/fhir",
                           "FHIR_TERMINOLOGY_PRELOAD": "false"})
        import uvicorn

        from fhir_server.api.http_protocol import FhirHttpProtocol
        from fhir_server.app import create_app
        from fhir_server.config import get_settings
        from fhir_server.storage.database import make_engine
        from fhir_server.storage.migrate import upgrade

        settings = get_settings()
        upgrade(make_engine(settings))
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                               http=FhirHttpProtocol, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)  # a starting server in this process, bounded by the thread being alive
            if not thread.is_alive():
                raise SystemExit("the server did not start")
        base = f"http://127.0.0.1:{port}/fhir"
        log(f"loading {args.patients} patients x 20 Observations")
        reads, searches = load_data(base, args.patients, rng)
        rows: list[list[Any]] = []
        areas: dict[str, dict[str, float]] = {}
        keys: dict[str, dict[str, float]] = {}
        kinds = [("read", reads), ("search", searches), ("metadata", ["metadata"])]
        for kind, pool in kinds:
            profile(base, [rng.choice(pool) for _ in range(50)])  # warm-up, not counted
            picks = [rng.choice(pool) for _ in range(args.requests)]
            cpu, by_area, key, writer = profile(base, picks)
            total = sum(by_area.values())
            n = args.requests
            rows.append([kind, n, f"{cpu * 1000 / n:.2f}", f"{total * 1000 / n:.2f}", f"{writer * 1000 / n:.2f}",
                         f"{writer / total:.0%}" if total else ""])
            areas[kind] = {a: s * 1000 / args.requests for a, s in by_area.items()}
            keys[kind] = {k: s * 1000 / args.requests for k, s in key.items()}
            log(f"{kind}: {rows[-1]}")
        server.should_exit = True
        thread.join(timeout=30)
    report = render(rows, areas, keys, facts, args)
    print(report)
    if not args.quick:
        write_section("profile-read", report)
        log("wrote the profile-read section of bench/RESULTS.md")
    return 0


def render(rows: list[list[Any]], areas: dict[str, dict[str, float]], keys: dict[str, dict[str, float]],
           facts: dict[str, str], args: argparse.Namespace) -> str:
    names = sorted({a for per in areas.values() for a in per}, key=lambda a: -areas["read"].get(a, 0.0))
    area_rows = [[a, *(f"{areas[k].get(a, 0.0):.3f}" for k in areas)] for a in names
                 if max(areas[k].get(a, 0.0) for k in areas) >= 0.005]
    key_names = sorted({n for per in keys.values() for n in per}, key=lambda n: -max(keys[k].get(n, 0.0) for k in keys))
    key_rows = [[n, *(f"{keys[k].get(n, 0.0):.3f}" for k in keys)] for n in key_names[:16]]
    return f"""## Where a read's and a search's CPU goes (`bench/profile_read.py`)

{facts_markdown(facts)}

The whole HTTP stack in one process under yappi (CPU clock, all threads): uvicorn with FhirHttpProtocol,
the app of `create_app` (access log, tenancy, auth with `FHIR_AUTH_REQUIRED` unset, audit on), PostgreSQL,
{args.patients} patients x 20 Observations stored through transaction Bundles; {args.requests} GETs of each
kind from a client in a child process over loopback, after 50 warm-up ones. Read: `Observation/ID`;
search: `Observation?patient=Patient/ID&code=http://loinc.org|CODE&date=ge2024-01-15`. yappi roughly
doubles the CPU of Python code, so read the shares; "process CPU" is the server process's own CPU clock
while profiled.

{table(["kind", "requests", "process CPU ms/req (profiled)", "profiled own time ms/req",
        "of which the audit writer thread (AuditEvent, its index rows, COPY)", "share"], rows)}

Own time by area, ms per request (each function's own time counted once, so a column adds up to the whole):

{table(["area", *areas.keys()], area_rows)}

Key functions by cumulative time, ms per request (nested: they overlap):

{table(["function", *keys.keys()], key_rows)}
"""


if __name__ == "__main__":
    raise SystemExit(main())

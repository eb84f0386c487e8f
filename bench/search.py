"""Search latency on PostgreSQL with 100,000 Patients and 2,000,000 Observations (issue 3, point 10).

Generates the data straight into a throwaway database with the server's own index rows
(``search_data.py``), starts a real ``fhir-server serve`` on loopback, and measures p50/p95 over
``--queries`` requests per query kind (one client, values drawn at random from the data), with the CPU
time of the server and of PostgreSQL per query. Prints a table, EXPLAIN ANALYZE of the slowest kind, and
writes the ``search`` section of RESULTS.md.

    .venv/bin/python bench/search.py                                      # full size
    .venv/bin/python bench/search.py --patients 10000 --observations 200000 --quick   # smaller, no RESULTS.md
    .venv/bin/python bench/search.py --db-name fhir_bench_search_full     # load once, keep the database
    .venv/bin/python bench/search.py --reuse-db fhir_bench_search_full    # later: only the query rows
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SOURCE_DIR,
    CpuMeter,
    LoadResult,
    admin_url,
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
    with_database,
    write_section,
)
from read import migrate
from search_data import CODES, LOINC, MRN, NOTES, Sample, generate, load_sample, save_sample, sizes

# read.py put bench/ first on sys.path again; the server's packages must win (bench/terminology.py would
# shadow the terminology package when the server code is imported here for EXPLAIN).
sys.path.insert(0, str(SOURCE_DIR))

DIRECT, COMPLEX = 50.0, 150.0  # p95 goals (ms): direct queries; chained / _has / include queries
HEADERS = ["query", "goal p95 ms", "queries", "p50 ms", "p95 ms", "max ms", "matches/page", "server CPU ms/q",
           "PostgreSQL CPU ms/q", "errors", "verdict"]
RARE = [c[0] for c in CODES if c[5] < 1]


def kinds(sample: Sample, rng: random.Random) -> list[tuple[str, float, Callable[[], str]]]:
    """(label, goal, make a path) for each query kind of the issue."""
    patients, heavy = sample.patients, sample.heavy

    def pick() -> tuple[str, str, str, str]:
        return rng.choice(patients)

    def code() -> str:
        return rng.choices([c[0] for c in CODES], [c[5] for c in CODES])[0]

    def year(a: int, b: int) -> str:
        return f"{rng.randint(a, b)}-{rng.randint(1, 12):02d}-01"

    return [
        ("Patient?name=<3-letter prefix>", DIRECT, lambda: f"Patient?name={pick()[1][:3]}"),
        ("Patient?identifier=sys|val", DIRECT, lambda: f"Patient?identifier={MRN}|{pick()[2]}"),
        ("Patient?birthdate=ge..&gender=..", DIRECT,
         lambda: f"Patient?birthdate=ge{year(2014, 2018)}&gender={rng.choice(['male', 'female'])}"),
        ("Observation?patient=X&code=LOINC&date=ge..", DIRECT,
         lambda: f"Observation?patient={pick()[0]}&code={LOINC}|{code()}&date=ge{year(2012, 2022)}"),
        ("Observation?code=..&value-quantity=gt..", DIRECT,
         lambda: f"Observation?code={LOINC}|2339-0&value-quantity=gt{rng.randint(235, 248)}"),
        ("Observation?subject:Patient.name=..", COMPLEX, lambda: f"Observation?subject:Patient.name={pick()[1]}"),
        ("Patient?_has:Observation:patient:code=..", COMPLEX,
         lambda: f"Patient?_has:Observation:patient:code={LOINC}|{rng.choice(RARE)}"),
        ("Encounter?patient=X&_include=participant&_revinclude=Observation:encounter", COMPLEX,
         lambda: f"Encounter?patient={pick()[0]}&_include=Encounter:participant"
                 "&_revinclude=Observation:encounter"),
        ("Observation?patient=X&_sort=-date&_count=50 (page 1)", DIRECT,
         lambda: f"Observation?patient={rng.choice(heavy)}&_sort=-date&_count=50"),
        ("_text (Observation?_text=<narrative word>)", DIRECT, lambda: f"Observation?_text={rng.choice(NOTES)}"),
    ]


def get(path: str, matches: list[int]) -> Callable[[httpx.Client], int]:
    def job(client: httpx.Client) -> int:
        resp = client.get(path)
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path[:80]}: HTTP {resp.status_code} {resp.text[:200]}")
        matches.append(sum(1 for e in resp.json().get("entry", []) if e["search"]["mode"] == "match"))
        return 1

    return job


def fifth_pages(base: str, sample: Sample, rng: random.Random, n: int) -> list[str]:
    """Follow next links to page 5 of ``patient=X&_sort=-date&_count=50`` (walked before measuring)."""
    urls: list[str] = []
    with httpx.Client(base_url=base + "/", timeout=60) as client:
        for pid in [rng.choice(sample.heavy) for _ in range(min(n, 3 * len(sample.heavy)))]:
            url = f"Observation?patient={pid}&_sort=-date&_count=50"
            for _ in range(4):
                links = {link["relation"]: link["url"] for link in client.get(url).json().get("link", [])}
                url = links.get("next", "")
                if not url:
                    break
            if url:
                urls.append(url)
    return [urls[i % len(urls)] for i in range(n)] if urls else []


def explain(database_url: str, base: str, path: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL the server runs for ``path`` (captured in this process)."""
    import psycopg
    from sqlalchemy import event

    from fhir_server.config import Settings
    from fhir_server.rest.request import FhirRequest
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.access import as_system

    settings = Settings(database_url=database_url, outbox_dispatcher=False, audit_enabled=False)
    server = FhirServer(settings)
    captured: list[tuple[str, Any]] = []

    @event.listens_for(server.engine, "before_cursor_execute")
    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "search_" in statement:
            captured.append((statement, parameters))

    split = urlsplit(path)
    server.handle(FhirRequest("GET", split.path, parse_qsl(split.query), base_url=base,
                              access=as_system("benchmark warm-up")))
    server.engine.dispose()
    out = []
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("SET plan_cache_mode = force_custom_plan")  # as the server's connections (database.py)
        if settings.db_parallel_workers_per_gather >= 0:
            conn.execute(f"SET max_parallel_workers_per_gather = {int(settings.db_parallel_workers_per_gather)}")
        for statement, parameters in captured[:3]:
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
            out.append("\n".join(str(r[0]) for r in plan))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--observations", type=int, default=2_000_000)
    parser.add_argument("--queries", type=int, default=500, help="requests per query kind")
    parser.add_argument("--workers", type=int, default=2, help="fhir-server serve --workers")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="deadline per query kind")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database (debugging)")
    parser.add_argument("--db-name", help="load into this fixed database name (created; kept afterwards)")
    parser.add_argument("--reuse-db", metavar="NAME",
                        help="skip generation: run the query rows against a database loaded earlier (kept)")
    parser.add_argument("--load-only", action="store_true", help="stop after loading (with --db-name)")
    parser.add_argument("--load-processes", type=int, default=2, help="processes extracting index rows")
    parser.add_argument("--quick", action="store_true", help="RESULTS.md is not written")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    began = time.perf_counter()
    rows: list[list[Any]] = []
    worst_ratio, slowest, slowest_path = 0.0, "", ""
    with database(args) as url:
        facts = machine_facts(url)
        if args.reuse_db:
            migrate(url)  # a migration added since the load (e.g. a new index) is applied to the kept data
            sample, meta = load_sample(url)
            args.patients, args.observations = meta["patients"], meta["observations"]
            log(f"reusing {args.reuse_db}: {sample.counts}")
        else:
            migrate(url)
            log(f"generating {args.patients:,} patients / {args.observations:,} observations with index rows")
            sample = generate(url, args.patients, args.observations, args.seed, args.load_processes)
            save_sample(url, sample, {"patients": args.patients, "observations": args.observations,
                                      "seed": args.seed})
        size = sizes(url)
        if args.load_only:
            log(f"loaded: {sample.counts}, {sample.index_rows:,} index rows; {sample.seconds}; {size}")
            return 0
        log(f"generated: {sample.counts}, {sample.index_rows:,} index rows; {sample.seconds}; {size}")
        with fhir_server(url, args.workers, extra_env={"FHIR_AUDIT_ENABLED": "false"}) as server:
            plan = kinds(sample, rng)
            warm = [get(make(), []) for _label, _goal, make in plan for _ in range(10)]
            run_load(server.base, warm, 1, max_seconds=args.max_seconds)
            fifth = fifth_pages(server.base, sample, rng, args.queries)
            measured = [(label, goal, [make() for _ in range(args.queries)]) for label, goal, make in plan]
            measured.insert(9, ("Observation?patient=X&_sort=-date&_count=50 (page 5)", DIRECT, fifth))
            for label, goal, paths in measured:
                matches: list[int] = []
                cpu = CpuMeter(server.process.pid, url)
                cpu.start()
                result = run_load(server.base, [get(p, matches) for p in paths], 1, max_seconds=args.max_seconds)
                cpu.stop()
                rows.append(cells(label, goal, result, cpu, matches))
                print(table(HEADERS, [rows[-1]]), flush=True)
                for error in result.errors[:3]:
                    log(f"  error: {error}")
                ratio = percentile(result.latencies, 95) * 1000 / goal
                if paths and ratio > worst_ratio:
                    worst_ratio, slowest, slowest_path = ratio, label, paths[0]
        plans = explain(url, server.base, slowest_path) if slowest_path else ""
    elapsed = time.perf_counter() - began
    report = render(rows, facts, sample, size, slowest, plans, elapsed, args)
    print(report)
    if not args.quick:
        write_section("search", report)
        log("wrote the search section of bench/RESULTS.md")
    return 0 if all(row[9] == 0 for row in rows) else 1


@contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    """The bench database: a reused one (--reuse-db), a fixed new name (--db-name) or a throwaway one."""
    if args.reuse_db:
        yield with_database(admin_url(), args.reuse_db)
        return
    if args.db_name:
        with psycopg.connect(libpq(admin_url()), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{args.db_name}"')
        log(f"loading into {args.db_name} (kept; re-run the queries with --reuse-db {args.db_name})")
        yield with_database(admin_url(), args.db_name)
        return
    with bench_database("search", keep=args.keep_db) as url:
        yield url


def cells(label: str, goal: float, r: LoadResult, cpu: CpuMeter, matches: list[int]) -> list[Any]:
    n = max(1, r.jobs_done)
    p95 = percentile(r.latencies, 95)
    verdict = "met" if p95 * 1000 <= goal else f"missed by {p95 * 1000 - goal:.0f} ms"
    return [f"`{label}`", f"{goal:.0f}", r.jobs_done, ms(percentile(r.latencies, 50)), f"**{ms(p95)}**",
            ms(max(r.latencies, default=float("nan"))), f"{sum(matches) / max(1, len(matches)):.1f}",
            f"{cpu.server * 1000 / n:.1f}", f"{cpu.postgres * 1000 / n:.1f}", len(r.errors), verdict]


def render(rows: list[list[Any]], facts: dict[str, str], sample: Sample, size: dict[str, str], slowest: str,
           plans: str, elapsed: float, args: argparse.Namespace) -> str:
    counts = ", ".join(f"{t} {n:,}" for t, n in sorted(sample.counts.items(), key=lambda kv: -kv[1]))
    secs = ", ".join(f"{k} {v:.0f}s" for k, v in sample.seconds.items())
    met = sum(1 for r in rows if r[-1] == "met")
    kept = (f" (queries only, against the database loaded earlier, `--reuse-db {args.reuse_db}`; load times are "
            "from that load)") if args.reuse_db else "" if args.db_name or args.keep_db else \
        "; the bench database was dropped afterwards"
    tables = ", ".join(f"{k} {v}" for k, v in size.items())
    return f"""## Search latency on PostgreSQL (`bench/search.py`)

{facts_markdown(facts)}

Dataset ({args.patients:,} patients requested / {args.observations:,} observations requested): {counts};
{sample.index_rows:,} search index rows (incl. one full-text row per resource). Names from {len(set(p[1] for p in
sample.patients))} family names (Indian, English, French, German; accented ones included), LOINC vitals and
labs with UCUM values, dates 2012-2025; 1% of patients have 300 Observations (the paging queries use them),
the others about {max(0, args.observations - 300 * len(sample.heavy)) // max(1, args.patients - len(sample.heavy))}.
Generated straight into PostgreSQL with COPY, **including the search index rows, extracted by the server's
own indexer code** (`Extractor`, full-text `documents`), secondary indexes dropped during the load and
rebuilt after, then VACUUM ANALYZE. Times: {secs}. Sizes: {tables}.

Each row: {args.queries} GETs with values drawn at random from the data, one client (httpx keep-alive),
through `fhir-server serve --workers {args.workers}` on loopback, after 10 warm-up queries per kind; latency
measured by the client (HTTP + JSON included). CPU ms/q: CPU time of the server processes and of the
database's PostgreSQL backends per query (robust to other load; the machine is shared by other sessions,
so wall times can be inflated — see the load averages). {met} of {len(rows)} kinds meet their goal.

{table(HEADERS, rows)}

EXPLAIN (ANALYZE, BUFFERS) of the SQL for one query of the kind furthest over (or nearest to) its goal,
`{slowest}` (captured from the server code in the bench process, run again with the same parameters):

```
{plans[:6000]}
```

Whole bench took {elapsed / 60:.1f} minutes{kept}.
"""


if __name__ == "__main__":
    raise SystemExit(main())

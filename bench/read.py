"""Read and vread latency with 1,000,000 stored resources on PostgreSQL, through a real ``fhir-server serve``
on loopback, with 1 and 4 concurrent clients, for ``--workers 1`` and ``--workers 2`` servers. Prints a
table and writes the ``read`` section of RESULTS.md. The bench database is dropped at the end.

    /tmp/venv/bin/python bench/read.py                      # full run (about 10 minutes)
    /tmp/venv/bin/python bench/read.py --resources 20000 --quick   # smoke run, no RESULTS.md
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CpuMeter,
    LoadResult,
    bench_database,
    facts_markdown,
    fhir_server,
    log,
    machine_facts,
    ms,
    percentile,
    run_load,
    table,
    write_section,
)
from fill import fill, table_sizes
from ingest import ceiling

GOAL_P95_MS = 10.0
HEADERS = ["server workers", "clients", "interaction", "requests", "requests/s", "p50 ms", "p95 ms", "p99 ms",
           "max ms", "server CPU ms/req", "PostgreSQL CPU ms/req", "CPU-bound ceiling req/s", "errors"]


def get(path: str) -> Callable[[httpx.Client], int]:
    def job(client: httpx.Client) -> int:
        resp = client.get(path)
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status_code}")
        return 1

    return job


def migrate(database_url: str) -> None:
    """The schema exactly as the server makes it (alembic migrations), before the fill."""
    from fhir_server.config import Settings
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade

    engine = make_engine(Settings(database_url=database_url))
    upgrade(engine)
    engine.dispose()


def cells(workers: int, clients: int, what: str, r: LoadResult, cpu: CpuMeter) -> list[Any]:
    rate = r.jobs_done / r.wall if r.wall else 0.0
    p95 = percentile(r.latencies, 95)
    n = max(1, r.jobs_done)
    return [workers, clients, what, r.jobs_done, f"{rate:,.0f}", ms(percentile(r.latencies, 50)), f"**{ms(p95)}**",
            ms(percentile(r.latencies, 99)), ms(max(r.latencies, default=float("nan"))),
            f"{cpu.server * 1000 / n:.2f}", f"{cpu.postgres * 1000 / n:.2f}",
            f"{ceiling(workers, cpu.server / n, cpu.postgres / n):,.0f}", len(r.errors)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1_000_000, help="stored resources to fill")
    parser.add_argument("--requests", type=int, default=2000, help="random ids per interaction and row")
    parser.add_argument("--workers", default="1,2", help="server worker counts (comma-separated)")
    parser.add_argument("--clients", default="1,4", help="concurrent client counts (comma-separated)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="deadline per measurement")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database (debugging)")
    parser.add_argument("--quick", action="store_true", help="smoke run; RESULTS.md is not written")
    args = parser.parse_args(argv)
    workers_list = [int(x) for x in args.workers.split(",")]
    clients_list = [int(x) for x in args.clients.split(",")]
    rng = random.Random(args.seed)
    began = time.perf_counter()
    free_before = shutil.disk_usage("/").free
    log(f"free disk: {free_before / 2**30:.1f} GiB")

    rows: list[list[Any]] = []
    with bench_database("read", keep=args.keep_db) as url:
        facts = machine_facts(url)
        migrate(url)
        log(f"filling {args.resources:,} resources (COPY, bypassing the API)")
        filled = fill(url, args.resources, seed=args.seed)
        sizes = table_sizes(url)
        log(f"filled in {filled.seconds:.0f}s: {sizes}")
        ids = filled.sample
        for workers in workers_list:
            with fhir_server(url, workers) as server:
                log(f"server up (--workers {workers}) at {server.base}")
                warm = [get(f"{t}/{i}") for t, i in rng.sample(ids, min(len(ids), 200))]
                run_load(server.base, warm, max(clients_list), max_seconds=args.max_seconds)
                for clients in clients_list:
                    picks = [rng.choice(ids) for _ in range(args.requests)]
                    for what, jobs in (("read", [get(f"{t}/{i}") for t, i in picks]),
                                       ("vread", [get(f"{t}/{i}/_history/1") for t, i in picks[::-1]])):
                        cpu = CpuMeter(server.process.pid, url)
                        cpu.start()
                        result = run_load(server.base, jobs, clients, max_seconds=args.max_seconds)
                        cpu.stop()
                        rows.append(cells(workers, clients, what, result, cpu))
                        print(table(HEADERS, [rows[-1]]), flush=True)
                        for error in result.errors[:3]:
                            log(f"  error: {error}")
    elapsed = time.perf_counter() - began
    report = render(rows, facts, filled.resources, filled.by_type, filled.bytes_json, filled.seconds, sizes,
                    elapsed, args)
    print(report)
    if not args.quick:
        write_section("read", report)
        log("wrote the read section of bench/RESULTS.md")
    return 0 if all(row[-1] == 0 for row in rows) else 1


def render(rows: list[list[Any]], facts: dict[str, str], total: int, by_type: dict[str, int], json_bytes: int,
           fill_seconds: float, sizes: dict[str, str], elapsed: float, args: argparse.Namespace) -> str:
    p95s = {(r[0], r[1], r[2]): float(str(r[6]).strip("*")) for r in rows}
    single = max((v for (_w, c, what), v in p95s.items() if c == 1 and what == "read"), default=float("nan"))
    worst = max(p95s.values(), default=float("nan"))
    verdict = "met" if single < GOAL_P95_MS else "NOT met"
    mix = ", ".join(f"{t} {n / max(1, total):.0%}" for t, n in sorted(by_type.items(), key=lambda kv: -kv[1]))
    return f"""## Read and vread latency with {total:,} stored resources (`bench/read.py`)

{facts_markdown(facts)}

Dataset: {total:,} current resources (+ the same {total:,} rows in `resource_history`), Synthea-style
patient records from `bench/synthea.py` (mix: {mix}); mean JSON size {json_bytes / max(1, total):,.0f} bytes.
Sizes: resource {sizes.get("resource")}, resource_history {sizes.get("resource_history")}, whole database
{sizes.get("database")}. Filled in {fill_seconds:.0f}s, then VACUUM ANALYZE.

**The fill bypasses the API**: PostgreSQL COPY straight into `resource`, then `INSERT ... SELECT` into
`resource_history`, with the same rows a create writes (version 1, content with `id`, `meta.versionId`,
`meta.lastUpdated`). Through the API, 1M resources would take 40+ minutes even at the best ingest rate
in the ingest section (about 400 resources/s), far past this bench's time budget, and the read path does
not depend on how the rows got there. No search index rows are written (reads do not search).

Each measurement: {args.requests:,} GETs of ids drawn uniformly at random from the whole dataset
(`Type/id` for read, `Type/id/_history/1` for vread), by that many client threads (httpx, keep-alive),
through a real `fhir-server serve --workers N` on loopback, after 200 warm-up reads. Latency is measured
by the client and includes HTTP and JSON serialisation. CPU ms/req and the ceiling are as in the ingest
section: CPU time of the server processes and of the bench database's PostgreSQL backends per request,
and the requests/s those costs allow on 2 otherwise idle cores.

Goal: read p95 < {GOAL_P95_MS:.0f} ms. Read p95 with one client (worst over the worker counts):
**{single:.1f} ms — goal {verdict}**. Worst p95 of any row: {worst:.1f} ms (the 4-client rows include
queueing for the 2 cores, which the server shares with the client and PostgreSQL).

{table(HEADERS, rows)}

Whole bench (fill + measurements) took {elapsed / 60:.1f} minutes; the bench database was dropped afterwards.
"""


if __name__ == "__main__":
    raise SystemExit(main())

"""Ingest throughput: Synthea-style patient transaction Bundles POSTed to a real ``fhir-server serve`` on
PostgreSQL, with 1 and 4 concurrent clients, for ``--workers 1`` and ``--workers 2`` servers; plus one
500-entry Bundle as a single transaction. Prints a table and writes the ``ingest`` section of RESULTS.md.

    /tmp/venv/bin/python bench/ingest.py            # full run (a few minutes)
    /tmp/venv/bin/python bench/ingest.py --quick    # smoke run, does not touch RESULTS.md
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

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
from synthea import make_bundles, sized_bundle

GOAL_RESOURCES_PER_S = 2500  # issue 19 goal 1: with 2 workers and 4 clients
GOAL_CPU_MS = 0.6  # issue 19 goal 1: server + PostgreSQL CPU per resource


def post_bundle(body: bytes, entries: int) -> Callable[[httpx.Client], int]:
    """A job that POSTs one transaction and returns how many entries it created (all or nothing)."""

    def job(client: httpx.Client) -> int:
        resp = client.post("", content=body, headers={"content-type": "application/fhir+json"})
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        created = sum(1 for e in orjson.loads(resp.content).get("entry", [])
                      if e.get("response", {}).get("status", "").startswith("201"))
        if created != entries:
            raise RuntimeError(f"{created} of {entries} entries created")
        return created

    return job


@dataclass
class Row:
    workers: int
    clients: int
    result: LoadResult
    entries_sent: int
    cpu: CpuMeter

    def cells(self) -> list[Any]:
        r = self.result
        rate = r.units / r.wall if r.wall else 0.0
        units = max(1, r.units)
        return [self.workers, self.clients, r.jobs_done, r.units, f"{r.wall:.1f}", f"**{rate:,.0f}**",
                ms(percentile(r.latencies, 50)), ms(percentile(r.latencies, 95)),
                f"{self.cpu.server * 1000 / units:.2f}", f"{self.cpu.postgres * 1000 / units:.2f}",
                f"{self.ceiling():,.0f}", len(r.errors)]

    def ceiling(self) -> float:
        units = max(1, self.result.units)
        return ceiling(self.workers, self.cpu.server / units, self.cpu.postgres / units)


def ceiling(workers: int, server_s: float, postgres_s: float, cores: int = 2) -> float:
    """Units/s if the server and PostgreSQL had the 2 cores to themselves and CPU were the only limit:
    the server can use at most min(workers, cores) cores (one Python process per core), and both together
    at most ``cores``."""
    if server_s <= 0:
        return float("nan")
    return min(min(workers, cores) / server_s, cores / (server_s + postgres_s))


def jobs_for(bundles: list[dict[str, Any]]) -> list[Callable[[httpx.Client], int]]:
    return [post_bundle(orjson.dumps(b), len(b["entry"])) for b in bundles]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="server worker counts to measure (comma-separated)")
    parser.add_argument("--clients", default="1,4", help="concurrent client counts (comma-separated)")
    parser.add_argument("--bundles", type=int, default=60, help="patient Bundles per measurement")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="deadline per measurement")
    parser.add_argument("--source", choices=["auto", "samples", "generated"], default="auto",
                        help="auto: the shared Synthea samples when present, else our own generator")
    parser.add_argument("--big-entries", type=int, default=500, help="entries of the single big transaction")
    parser.add_argument("--big-runs", type=int, default=5, help="how often to post the big transaction")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; RESULTS.md is not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.bundles, args.big_runs, args.big_entries = 4, 1, 100
    workers_list = [int(x) for x in args.workers.split(",")]
    clients_list = [int(x) for x in args.clients.split(",")]
    rng = random.Random(args.seed)

    rows: list[Row] = []
    big_rows: list[list[Any]] = []
    facts: dict[str, str] = {}
    kind, mix = "", Counter[str]()
    for workers in workers_list:
        with bench_database(f"ingest_w{workers}") as url, fhir_server(url, workers) as server:
            facts = facts or machine_facts(url)
            log(f"server up (--workers {workers}) at {server.base}")
            kind, warmup = make_bundles(args.source, 2 * workers, rng)
            run_load(server.base, jobs_for(warmup), 2 * workers, max_seconds=args.max_seconds)
            for clients in clients_list:
                kind, bundles = make_bundles(args.source, args.bundles, rng)
                mix = Counter(e["resource"]["resourceType"] for b in bundles for e in b["entry"])
                sent = sum(len(b["entry"]) for b in bundles)
                log(f"workers={workers} clients={clients}: {len(bundles)} {kind} Bundles, {sent} resources")
                jobs = jobs_for(bundles)
                cpu = CpuMeter(server.process.pid, url)
                cpu.start()
                result = run_load(server.base, jobs, clients, max_seconds=args.max_seconds)
                cpu.stop()
                rows.append(Row(workers, clients, result, sent, cpu))
                print(table(HEADERS, [rows[-1].cells()]))
                for error in result.errors[:3]:
                    log(f"  error: {error}")
            big = [sized_bundle(rng, args.big_entries) for _ in range(args.big_runs)]
            result = run_load(server.base, jobs_for(big), 1, max_seconds=args.max_seconds)
            median = statistics.median(result.latencies) if result.latencies else float("nan")
            big_rows.append([workers, args.big_entries, result.jobs_done, ms(median), ms(max(result.latencies,
                                                                                            default=float("nan"))),
                             f"{args.big_entries / median:,.0f}", len(result.errors)])
            print(table(BIG_HEADERS, [big_rows[-1]]))

    report = render(rows, big_rows, facts, kind, mix, args)
    print(report)
    if not args.quick:
        write_section("ingest", report)
        log("wrote the ingest section of bench/RESULTS.md")
    return 0 if all(not r.result.errors for r in rows) else 1


HEADERS = ["server workers", "clients", "bundles", "resources", "wall s", "resources/s", "bundle p50 ms",
           "bundle p95 ms", "server CPU ms/resource", "PostgreSQL CPU ms/resource", "CPU-bound ceiling resources/s",
           "errors"]
BIG_HEADERS = ["server workers", "entries", "runs", "median ms", "max ms", "resources/s", "errors"]


def render(rows: list[Row], big_rows: list[list[Any]], facts: dict[str, str], kind: str, mix: Counter[str],
           args: argparse.Namespace) -> str:
    best = max((r.result.units / r.result.wall for r in rows if r.result.wall), default=0.0)
    verdict = "met" if best >= GOAL_RESOURCES_PER_S else "NOT met"
    best_ceiling = max((r.ceiling() for r in rows), default=0.0)
    cpu = min(((r.cpu.server + r.cpu.postgres) * 1000 / max(1, r.result.units) for r in rows), default=float("nan"))
    cpu_verdict = "met" if cpu <= GOAL_CPU_MS else "NOT met"
    per_bundle = sum(mix.values()) / max(1, args.bundles)
    source = ("the real Synthea samples in ../shared/samples/synthea, re-identified with fresh UUIDs per "
              "Bundle, as transactions, with Synthea-style MedicationRequests + pharmacy Claims added"
              if kind == "samples" else "bench/synthea.py's own Synthea-style generator")
    mix_text = ", ".join(f"{t} {n / max(1, sum(mix.values())):.0%}" for t, n in mix.most_common())
    return f"""## Ingest: transaction Bundles (`bench/ingest.py`)

{facts_markdown(facts)}

Dataset: patient transaction Bundles from {source}; about {per_bundle:.0f} entries each, all `POST` with
`urn:uuid:` references; {args.bundles} Bundles per row. Mix: {mix_text}.
For each worker count a real `fhir-server serve --workers N` starts on loopback on a fresh PostgreSQL
database and is warmed up with 2 x N Bundles; each row then posts its Bundles from that many client
threads (httpx, keep-alive; rows share the server and database). resources/s =
resources committed / wall time; latency is per Bundle, measured by the client.
CPU ms/resource is the CPU time of the server's processes and of the PostgreSQL backends serving the bench
database during the row, per resource: it hardly depends on other load on the machine. The ceiling is what
those costs allow on 2 otherwise idle cores (at most min(workers, 2) cores of server, 2 cores in all), with
the client elsewhere — the number to compare with the goal when the machine was busy.

Goal: >= {GOAL_RESOURCES_PER_S:,} resources/s. Best measured: **{best:,.0f} resources/s — goal {verdict}**;
best CPU-bound ceiling on 2 idle cores: {best_ceiling:,.0f} resources/s.
Goal: total CPU (server + PostgreSQL) <= {GOAL_CPU_MS} ms per resource. Lowest measured: **{cpu:.2f} ms — goal
{cpu_verdict}**.

{table(HEADERS, [r.cells() for r in rows])}

One {args.big_entries}-entry transaction (one patient record plus more patients to fill it up), posted
{args.big_runs} times in a row by one client:

{table(BIG_HEADERS, big_rows)}

Caveats: the client runs on the same 2 cores as the server and PostgreSQL; the test PostgreSQL runs with
fsync=off and synchronous_commit=off (scripts/postgres.sh), so commit latency is lower than on a durable
production setup; the access log (query values masked) is on, as `serve` configures it.
"""


if __name__ == "__main__":
    raise SystemExit(main())

"""Where ingest time goes: cProfile around ``FhirServer.handle`` on patient transaction Bundles, in-process
on PostgreSQL (no HTTP). Prints and writes the ``ingest-profile`` section of RESULTS.md: in-process
throughput without the profiler, then the hot spots by own time, by area, and key functions by
cumulative time.

    /tmp/venv/bin/python bench/profile_ingest.py
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SOURCE_DIR, bench_database, facts_markdown, log, machine_facts, table, write_section
from synthea import make_bundles

# Own time is attributed to an area by where the function lives (first match wins).
AREAS = [
    ("validation: fhir.resources / fhir_core models", ("fhir/resources", "fhir_core")),
    ("validation: pydantic", ("pydantic",)),
    ("validation: our validator", ("fhir_server/validation",)),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("psycopg (driver, incl. waiting for PostgreSQL)", ("psycopg",)),
    ("transaction Bundle processing (rest/bundle.py)", ("fhir_server/rest/bundle",)),
    ("repository / unit of work / hooks", ("fhir_server/storage", "fhir_server/hooks")),
    ("search / indexing", ("fhir_server/search",)),
    ("other fhir_server", ("fhir_server",)),
    ("JSON (orjson/json)", ("orjson", "json")),
]
# Entry points whose cumulative time tells the story (matched on function name and file).
KEY_FUNCTIONS = [
    ("transaction", "rest/bundle.py"), ("plan", "rest/bundle.py"), ("_rewrite", "rest/bundle.py"),
    ("run_entry", "rest/bundle.py"), ("create", "storage/repository.py"), ("_prepare", "storage/repository.py"),
    ("validate", "fhir_server/validation"), ("model_validate", "pydantic"), ("_write", "storage/repository.py"),
    ("execute", "sqlalchemy/engine/base.py"), ("_stamp", "storage/repository.py"), ("run", "fhir_server/hooks.py"),
    ("commit", "sqlalchemy/engine/base.py"), ("json_body", "rest/request.py"), ("dumps", "orjson"),
]


SEND_FUNCTIONS = {"_send_query_prepared", "_execute_send", "_exec_command"}


def area_of(filename: str) -> str:
    for name, needles in AREAS:
        if any(n in filename for n in needles):
            return name
    if filename.startswith("~") or "<built-in" in filename:
        return "builtins (C functions)"
    return "other Python"


def requests_for(bundles: list[dict[str, Any]]) -> list[Any]:
    from fhir_server.rest.request import FhirRequest
    from fhir_server.storage.access import as_system

    return [FhirRequest("POST", "", [], {"content-type": "application/fhir+json"}, orjson.dumps(b),
                        base_url="http://127.0.0.1/fhir", access=as_system("benchmark load")) for b in bundles]


# Parts of the write path timed on their own, without the profiler (whose overhead inflates Python-heavy
# code), on the very resources of the timed phase: what each costs per resource, in CPU microseconds.
def components(server: Any, bundles: list[dict[str, Any]], rounds: int = 3) -> list[tuple[str, float]]:
    from fhir_server.rest.bundle import Plan, _rewrite
    from fhir_server.rest.json_body import parse_json
    from fhir_server.search.fulltext.documents import content, narrative

    bodies = [orjson.dumps(b) for b in bundles]
    work = []
    for b in bundles:
        plan = Plan([])
        plan.targets = {e["fullUrl"]: f"{e['resource']['resourceType']}/{i}" for i, e in enumerate(b["entry"])
                        if e.get("fullUrl")}
        work += [(e["resource"]["resourceType"], str(i), e["resource"], plan) for i, e in enumerate(b["entry"])]
    extractor = server.search.indexer.extractor
    validator = server.validator
    parts: list[tuple[str, Callable[[], object]]] = [
        ("parse the request body (orjson + repeated-key check)", lambda: [parse_json(x) for x in bodies]),
        ("rewrite fullUrl references (rest/bundle.py)",
         lambda: [_rewrite(None, r, p.targets, p.absolute(), 0) for _t, _i, r, p in work]),  # type: ignore[arg-type]
        ("validate (StructureDefinitions)", lambda: [validator.validate(r, t) for t, _i, r, _p in work]),
        ("search index rows (extract.py)", lambda: [extractor.extract(t, i, r) for t, i, r, _p in work]),
        ("full-text document (_text, _content)", lambda: [(content(r), narrative(r)) for _t, _i, r, _p in work]),
        ("resource JSON for the row (orjson.dumps)", lambda: [orjson.dumps(r) for _t, _i, r, _p in work]),
    ]
    out = []
    for name, run in parts:
        best = float("inf")
        for _ in range(rounds):
            c0 = time.process_time()
            run()
            best = min(best, time.process_time() - c0)
        out.append((name, best * 1e6 / max(1, len(work))))
    return out


def prime(server: Any, bundles: list[dict[str, Any]]) -> None:
    """Build the per-type caches (SearchParameter plans, StructureDefinition trees, the UCUM registry) for every
    resource of ``bundles`` before anything is timed: one-time costs, which a few warm-up Bundles need not
    all reach, must not be counted as the cost of a write."""
    from fhir_server.search.fulltext.documents import content

    extractor = server.search.indexer.extractor
    for b in bundles:
        for i, e in enumerate(b["entry"]):
            r = e["resource"]
            extractor.extract(r["resourceType"], str(i), r)
            server.validator.validate(r, r["resourceType"])
            content(r)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", type=int, default=30, help="Bundles per phase (timed, then profiled)")
    parser.add_argument("--source", choices=["auto", "samples", "generated"], default="auto")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke run; RESULTS.md is not written")
    args = parser.parse_args(argv)
    from fhir_server.config import Settings
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.migrate import upgrade

    rng = random.Random(args.seed)
    with bench_database("profile") as url:
        facts = machine_facts(url)
        server = FhirServer(Settings(database_url=url, outbox_dispatcher=False))
        upgrade(server.engine)
        kind, bundles = make_bundles(args.source, 3 + 2 * args.bundles, rng)
        warm, timed, profiled = (requests_for(bundles[:3]), requests_for(bundles[3:3 + args.bundles]),
                                 requests_for(bundles[3 + args.bundles:]))
        for req in warm:
            assert server.handle(req).status == 200
        prime(server, bundles)
        entries = sum(len(b["entry"]) for b in bundles[3:3 + args.bundles])
        t0, c0 = time.perf_counter(), time.process_time()
        for req in timed:
            assert server.handle(req).status == 200
        plain, cpu = time.perf_counter() - t0, time.process_time() - c0
        log(f"in-process, no profiler: {entries / plain:,.0f} resources/s, {cpu * 1000 / entries:.3f} ms CPU/resource")
        parts = components(server, bundles[3:3 + args.bundles])
        profile = cProfile.Profile()
        profile.enable()
        for req in profiled:
            assert server.handle(req).status == 200
        profile.disable()
        server.engine.dispose()
    report = render(pstats.Stats(profile), facts, kind, args, entries, plain, cpu, parts)
    print(report)
    if not args.quick:
        write_section("ingest-profile", report)
        log("wrote the ingest-profile section of bench/RESULTS.md")
    return 0


def render(stats: pstats.Stats, facts: dict[str, str], kind: str, args: argparse.Namespace, entries: int,
           plain: float, cpu: float, parts: list[tuple[str, float]]) -> str:
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values())

    def short(key: tuple[str, int, str]) -> str:
        filename, line, name = key
        for marker in ("site-packages/", f"{SOURCE_DIR}/"):
            if marker in filename:
                filename = filename.split(marker, 1)[1]
        return f"`{name}` ({filename}:{line})" if line else f"`{name}`"

    own = sorted(raw.items(), key=lambda kv: -kv[1][2])[: args.top]
    own_rows = [[i + 1, short(k), f"{v[2] / total:.1%}", f"{v[3] / total:.1%}", v[1]] for i, (k, v) in enumerate(own)]
    areas: dict[str, float] = {}
    for (filename, _line, _name), v in raw.items():
        areas[area_of(filename)] = areas.get(area_of(filename), 0.0) + v[2]
    area_rows = [[name, f"{t / total:.1%}"] for name, t in sorted(areas.items(), key=lambda kv: -kv[1])]
    key_rows = []
    for name, where in KEY_FUNCTIONS:
        matches = [(k, v) for k, v in raw.items() if k[2] == name and where in k[0]]
        if matches:
            cum = max(v[3] for _k, v in matches)  # the outermost frame of a recursive function
            calls = sum(v[1] for _k, v in matches)
            key_rows.append([f"`{name}` ({where})", f"{cum / total:.1%}", calls])
    key_rows.sort(key=lambda r: -float(str(r[1]).rstrip("%")))
    # Every query psycopg sends goes through one of these: statements per resource = round-trip pressure.
    sends = sum(v[1] for k, v in raw.items() if "psycopg" in k[0] and k[2] in SEND_FUNCTIONS)
    resources = entries  # the profiled phase posts as many Bundles as the timed one, of the same kind
    per_resource = cpu * 1e6 / max(1, entries)
    part_rows = [[name, f"{us:,.0f}", f"{us / per_resource:.0%}"] for name, us in parts]
    rest = per_resource - sum(us for _n, us in parts)
    part_rows += [["everything else (transaction machinery, hooks, audit, COPY encoding, driver, ...)",
                   f"{rest:,.0f}", f"{rest / per_resource:.0%}"],
                  ["**whole write, in-process (server CPU, no HTTP)**", f"**{per_resource:,.0f}**", "100%"]]
    return f"""## Ingest profile (`bench/profile_ingest.py`)

{facts_markdown(facts)}

In-process (`FhirServer.handle`, no HTTP) on PostgreSQL, {kind} patient transaction Bundles as in the
ingest bench. Without the profiler, {args.bundles} Bundles ({entries:,} resources) took {plain:.1f}s:
**{entries / plain:,.0f} resources/s on one thread**, **{cpu * 1000 / max(1, entries):.3f} ms of this process's CPU per
resource** (PostgreSQL's own CPU not included; `bench/ingest.py` measures both through HTTP).

Where a resource's server CPU goes, each part timed on its own over the same resources without the profiler
(best of 3; microseconds of CPU per resource):

{table(["part of the write path", "CPU us/resource", "share"], part_rows)}

Then {args.bundles} more Bundles under cProfile (profiled time {total:.1f}s; cProfile inflates Python-heavy
code, so read the shares, not the absolute times).

Statements sent to PostgreSQL during the profiled phase: {sends:,} (about {sends / max(1, resources):.1f} per
resource, counted at psycopg's send functions; each is a separate protocol message that PostgreSQL parses,
plans from the prepared statement and executes).

Own time by area (where the CPU is spent):

{table(["area", "share of own time"], area_rows)}

Key functions by cumulative time (share of the profiled time spent inside them):

{table(["function", "cumulative share", "calls"], key_rows)}

Top {args.top} functions by own time:

{table(["#", "function", "own", "cumulative", "calls"], own_rows)}
"""


if __name__ == "__main__":
    raise SystemExit(main())

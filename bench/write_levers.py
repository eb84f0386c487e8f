"""A/B of the write-path levers of issue 19 goal 1, interleaved in one process so machine load hits both
sides alike. Writes the ``write-levers`` section of RESULTS.md.

    .venv/bin/python bench/write_levers.py            # ~1-2 minutes
    .venv/bin/python bench/write_levers.py --quick    # smoke run, does not touch RESULTS.md

1. COPY text built here (storage/bulk.py ``_copy_text``) against psycopg's ``write_row`` per row: whole
   transaction Bundles through ``FhirServer.handle`` on PostgreSQL; this process's CPU and that of its
   PostgreSQL backend, per resource.
2. The fullUrl rewrite (rest/bundle.py): the previous code (lookbehind regex, every fullUrl scanned per
   entry) against the current one, on the same resources; CPU per resource.
3. ``hash64`` memoised against the plain blake2b, inside index extraction (search/extract.py).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import _proc_stat, bench_database, facts_markdown, log, machine_facts, table, write_section
from synthea import make_bundles, sized_bundle


def _backend_cpu(server: Any) -> float:
    with server.engine.connect() as conn:
        pids = [int(r[0]) for r in conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    return sum(stat[1] for pid in pids if (stat := _proc_stat(pid)) is not None)


def requests_for(bundles: list[dict[str, Any]]) -> list[Any]:
    from fhir_server.rest.request import FhirRequest
    from fhir_server.storage.access import as_system

    return [FhirRequest("POST", "", [], {"content-type": "application/fhir+json"}, orjson.dumps(b),
                        base_url="http://127.0.0.1/fhir", access=as_system("benchmark load")) for b in bundles]


def copy_ab(url: str, bundles: list[dict[str, Any]], rounds: int) -> list[list[Any]]:
    from fhir_server.config import Settings
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage import bulk
    from fhir_server.storage.migrate import upgrade

    server = FhirServer(Settings(database_url=url, outbox_dispatcher=False))
    upgrade(server.engine)
    for req in requests_for(bundles[:2]):
        assert server.handle(req).status == 200
    built = bulk._copy_text
    sides: dict[str, Callable[..., str | None]] = {"psycopg write_row per row (before)": lambda *a: None,
                                                   "one COPY text block per table (after)": built}
    totals = {name: [0.0, 0.0, 0] for name in sides}
    chunk = max(1, (len(bundles) - 2) // (2 * rounds))
    rest = bundles[2:]
    for r in range(rounds):
        for j, (name, fn) in enumerate(sides.items()):
            part = rest[(2 * r + j) * chunk:(2 * r + j + 1) * chunk]
            reqs = requests_for(part)
            bulk._copy_text = fn  # type: ignore[assignment]
            pg0, c0 = _backend_cpu(server), time.process_time()
            for req in reqs:
                assert server.handle(req).status == 200
            c1, pg1 = time.process_time(), _backend_cpu(server)
            t = totals[name]
            t[0] += c1 - c0
            t[1] += pg1 - pg0
            t[2] += sum(len(b["entry"]) for b in part)
    bulk._copy_text = built
    server.engine.dispose()
    return [[name, n, f"{s * 1000 / n:.3f}", f"{p * 1000 / n:.3f}", f"{(s + p) * 1000 / n:.3f}"]
            for name, (s, p, n) in totals.items()]


# The fullUrl rewrite as it was before (commit 9c3cbcf): a lookbehind regex tried at every position, and
# every fullUrl of the Bundle scanned for each entry.
_OLD_URN = re.compile(r'(?<=")(urn:(?:uuid|oid):[^"\\]+)(?=\\?")')


def _old_rewrite(resource: dict[str, Any], targets: dict[str, str]) -> dict[str, Any]:
    text = orjson.dumps(resource).decode()
    changed = False
    if "urn:" in text:
        text = _OLD_URN.sub(lambda m: targets.get(m.group(1), m.group(1)), text)
        changed = True
    for full_url, ref in targets.items():
        if not full_url.startswith("urn:") and f'"{full_url}"' in text:
            text = text.replace(f'"{full_url}"', f'"{ref}"')
            changed = True
    return orjson.loads(text) if changed else resource


def rewrite_ab(sets: list[tuple[str, list[dict[str, Any]]]], rounds: int) -> list[list[Any]]:
    from fhir_server.rest.bundle import Plan, _rewrite

    rows = []
    for label, bundles in sets:
        work = []
        for b in bundles:
            plan = Plan([])
            plan.targets = {e["fullUrl"]: f"{e['resource']['resourceType']}/{i}" for i, e in enumerate(b["entry"])}
            work += [(e["resource"], plan) for e in b["entry"]]
        before, after = float("inf"), float("inf")
        for _ in range(rounds):
            c0 = time.process_time()
            old = [_old_rewrite(r, p.targets) for r, p in work]
            c1 = time.process_time()
            new = [_rewrite(None, r, p.targets, p.absolute(), 0) for r, p in work]  # type: ignore[arg-type]
            c2 = time.process_time()
            before, after = min(before, c1 - c0), min(after, c2 - c1)
        assert old == new, "the rewrite changed its output"
        rows.append([label, len(work), f"{before * 1e6 / len(work):.0f}", f"{after * 1e6 / len(work):.0f}"])
    return rows


def hash_ab(bundles: list[dict[str, Any]], rounds: int) -> list[list[Any]]:
    from fhir_server.config import Settings
    from fhir_server.rest.server import FhirServer
    from fhir_server.search import extract, values

    server = FhirServer(Settings(database_url="sqlite://", outbox_dispatcher=False))
    extractor = server.search.indexer.extractor
    work = [(e["resource"]["resourceType"], str(i), e["resource"]) for b in bundles for i, e in enumerate(b["entry"])]
    memo = values.hash64
    sides = {"blake2b on every call (before)": memo.__wrapped__, "memoised, 8,192 entries (after)": memo}
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(rounds):
        for name, fn in sides.items():
            extract.hash64 = fn  # type: ignore[assignment]
            c0 = time.process_time()
            for item in work:
                extractor.extract(*item)
            best[name] = min(best[name], time.process_time() - c0)
    extract.hash64 = memo
    return [[name, len(work), f"{t * 1e6 / len(work):.0f}"] for name, t in best.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", type=int, default=42, help="Synthea Bundles for the COPY A/B")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.bundles, args.rounds = 8, 1
    rng = random.Random(20261207)
    kind, bundles = make_bundles("auto", args.bundles, rng)
    with bench_database("levers") as url:
        facts = machine_facts(url)
        log("COPY A/B")
        copy_rows = copy_ab(url, bundles, args.rounds)
    print(table(COPY_HEADERS, copy_rows))
    log("rewrite A/B")
    big = [sized_bundle(rng, 500) for _ in range(2)]
    rewrite_rows = rewrite_ab([(f"{kind} Bundles (~110 entries)", bundles[:10]), ("500-entry Bundles", big)],
                              args.rounds)
    print(table(REWRITE_HEADERS, rewrite_rows))
    log("hash64 A/B")
    hash_rows = hash_ab(bundles[:10], args.rounds)
    print(table(HASH_HEADERS, hash_rows))
    report = f"""## Write path levers, A/B (`bench/write_levers.py`)

{facts_markdown(facts)}

Each lever measured against what it replaced, both sides interleaved in one process on the same {kind}
patient transaction Bundles (so the machine's load hits both alike); CPU time, not wall time.

1. Search index and resource rows go to PostgreSQL as one `COPY ... FROM STDIN` per table per transaction
   (already so before this work: ~0.1 statements per resource, see the ingest profile). The COPY data is now
   written as one text block per table (storage/bulk.py `_copy_text`) instead of psycopg's `write_row` per
   row, which dumps each value through its adapters. `FhirServer.handle` in-process, {args.rounds} rounds
   alternating the two; server = this process, PostgreSQL = its backends:

{table(COPY_HEADERS, copy_rows)}

2. The fullUrl rewrite of a transaction (rest/bundle.py): the `urn:` regex now starts with the quote it
   looked behind for (a literal start is searched for, not tried at each position), and the absolute
   fullUrls are listed once per Bundle instead of scanning every fullUrl for every entry (quadratic in the
   Bundle's size). Same output, checked:

{table(REWRITE_HEADERS, rewrite_rows)}

3. `hash64` (search/values.py, three per token row) memoised: most calls repeat (type + param + system,
   common codes). Whole index extraction per resource:

{table(HASH_HEADERS, hash_rows)}
"""
    print(report)
    if not args.quick:
        write_section("write-levers", report)
        log("wrote the write-levers section of bench/RESULTS.md")
    return 0


COPY_HEADERS = ["COPY data", "resources", "server CPU ms/resource", "PostgreSQL CPU ms/resource",
                "total CPU ms/resource"]
REWRITE_HEADERS = ["Bundles", "resources", "before us/resource", "after us/resource"]
HASH_HEADERS = ["hash64", "resources", "extraction CPU us/resource"]

if __name__ == "__main__":
    raise SystemExit(main())

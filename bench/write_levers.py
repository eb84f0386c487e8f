"""A/B of the write-path levers of issue 19 goal 1, interleaved in one process so machine load hits both
sides alike. Writes the ``write-levers`` section of RESULTS.md.

    .venv/bin/python bench/write_levers.py            # ~1-2 minutes
    .venv/bin/python bench/write_levers.py --quick    # smoke run, does not touch RESULTS.md

1. The fullUrl rewrite (rest/bundle.py): the previous code (lookbehind regex, every fullUrl scanned per
   entry) against the current one, on the same resources; CPU per resource.
2. ``hash64`` memoised against the plain blake2b, inside index extraction (search/extract.py).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SOURCE_DIR, bench_database, facts_markdown, log, machine_facts, table, write_section
from profile_ingest import prime
from synthea import make_bundles, sized_bundle

sys.path.insert(0, str(SOURCE_DIR))  # the server's packages before bench/ (bench/terminology.py)


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
    prime(server, bundles)
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
    parser.add_argument("--bundles", type=int, default=12, help="Synthea Bundles for the A/Bs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.bundles, args.rounds = 8, 1
    rng = random.Random(20261207)
    kind, bundles = make_bundles("auto", args.bundles, rng)
    with bench_database("levers") as url:
        facts = machine_facts(url)
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

Tried and not kept: writing the COPY data as one text block per table in Python instead of psycopg's
`write_row` per row. psycopg's C implementation already formats rows at about the same cost: over the rows
the server flushed for 12 Bundles, COPYed again both ways in rolled-back transactions, 121 vs 130 us and
186 vs 209 us of server CPU per resource in two runs (before vs after; noise larger than any gain), so
storage/bulk.py keeps `write_row`. (tests/integration/test_write_copy.py, written for it, stays: awkward
strings are stored and found exactly.)

1. The fullUrl rewrite of a transaction (rest/bundle.py): the `urn:` regex now starts with the quote it
   looked behind for (a literal start is searched for, not tried at each position), and the absolute
   fullUrls are listed once per Bundle instead of scanning every fullUrl for every entry (quadratic in the
   Bundle's size). Same output, checked:

{table(REWRITE_HEADERS, rewrite_rows)}

2. `hash64` (search/values.py, three per token row) memoised: most calls repeat (type + param + system,
   common codes). Whole index extraction per resource:

{table(HASH_HEADERS, hash_rows)}
"""
    print(report)
    if not args.quick:
        write_section("write-levers", report)
        log("wrote the write-levers section of bench/RESULTS.md")
    return 0


REWRITE_HEADERS = ["Bundles", "resources", "before us/resource", "after us/resource"]
HASH_HEADERS = ["hash64", "resources", "extraction CPU us/resource"]

if __name__ == "__main__":
    raise SystemExit(main())

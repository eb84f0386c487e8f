"""Fresh data plans well (issue 19 goal 4): searches at once after a load, with and without the ANALYZE the
server now runs after `load`, `$import` and long runs of writes (fhir_server/storage/statistics.py).

A fresh PostgreSQL database per size gets --sizes Patients with --observations Observations each (transaction
Bundles through the FHIR core, in-process: no HTTP, so the figures are the planner's). Then, before any
statistics exist, --searches `Observation?patient=&code=&date=ge` searches are timed; then the tables are
analysed (what the server does) and the same searches timed again.
Usage: .venv/bin/python bench/fresh_plans.py [--sizes 200,2000] [--observations 20] [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import bench_database, facts_markdown, log, machine_facts, ms, percentile, table, write_section

CODES = ["8867-4", "8480-6", "8462-4", "29463-7", "8310-5"]


def bundle(first: int, patients: int, observations: int) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for p in range(first, first + patients):
        ref = f"urn:uuid:00000000-0000-4000-8000-{p:012d}"
        entries.append({"fullUrl": ref, "request": {"method": "POST", "url": "Patient"},
                        "resource": {"resourceType": "Patient", "name": [{"family": f"Fresh{p}"}]}})
        for o in range(observations):
            entries.append({"request": {"method": "POST", "url": "Observation"}, "resource": {
                "resourceType": "Observation", "status": "final", "subject": {"reference": ref},
                "code": {"coding": [{"system": "http://loinc.org", "code": CODES[o % len(CODES)]}]},
                "effectiveDateTime": f"20{10 + o % 15}-0{1 + o % 9}-1{o % 10}T10:00:00Z",
                "valueQuantity": {"value": 60 + o, "unit": "/min"}}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def searches(server: Any, patients: list[str], n: int, access: Any) -> list[float]:
    from fhir_server.rest.request import FhirRequest

    rng = random.Random(11)
    took = []
    for _ in range(n):
        query = [("patient", rng.choice(patients)), ("code", f"http://loinc.org|{rng.choice(CODES)}"),
                 ("date", "ge2015-01-01")]
        started = time.perf_counter()
        resp = server.handle(FhirRequest("GET", "Observation", query=query, access=access))
        took.append(time.perf_counter() - started)
        assert resp.status == 200, resp.resource
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[200, 2000],
                        help="patients in each fresh database, comma-separated")
    parser.add_argument("--observations", type=int, default=20)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="200 patients, 100 searches; RESULTS.md untouched")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.searches = [200], 100
    from fhir_server.config import Settings
    from fhir_server.rest.request import FhirRequest
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.access import as_system
    from fhir_server.storage.migrate import upgrade
    from fhir_server.storage.statistics import analyze

    access = as_system("bench: loading and searching")
    rows: list[list[Any]] = []
    facts: dict[str, str] = {}
    for size in args.sizes:
        with bench_database("fresh") as url:
            facts = machine_facts(url)
            server = FhirServer(Settings(database_url=url, audit_enabled=False, analyze_after_rows=0))
            upgrade(server.engine)
            patients: list[str] = []
            started = time.perf_counter()
            for first in range(0, size, 50):
                resp = server.handle(FhirRequest("POST", "", headers={"content-type": "application/fhir+json"},
                                                 resource=bundle(first, min(50, size - first), args.observations),
                                                 access=access))
                assert resp.status == 200, resp.resource
                patients += [e["response"]["location"].split("/")[1] for e in (resp.resource or {})["entry"]
                             if e["response"]["location"].startswith("Patient/")]
            loaded = time.perf_counter() - started
            log(f"loaded {size} patients in {loaded:.0f} s")
            fresh = searches(server, patients, args.searches, access)
            analysed_in = analyze(server.engine)
            analysed = searches(server, patients, args.searches, access)
            server.engine.dispose()
        resources = size * (1 + args.observations)
        rows += [[resources, f"{loaded:.0f} s", "at once, no ANALYZE", ms(percentile(fresh, 50)),
                  ms(percentile(fresh, 95))],
                 [resources, f"{loaded:.0f} s", f"after ANALYZE ({analysed_in:.2f} s)", ms(percentile(analysed, 50)),
                  ms(percentile(analysed, 95))]]
    body = f"""## Searches right after a load (`bench/fresh_plans.py`)

{facts_markdown(facts)}

For each size, a fresh database gets Patients with {args.observations} Observations each, written as
transaction Bundles of 50 patients through the FHIR core in-process, then {args.searches}
`Observation?patient=&code=&date=ge2015-01-01` searches at once, in-process (no HTTP), one at a time; then the
same after an ANALYZE. Autovacuum runs as configured (migration 0028: analyse at 2% new rows): a load long
enough lets it analyse on its own before the searches, a short one does not.
`fhir-server load` and `$import` now run the ANALYZE themselves when they finish, and any server does in
the background after FHIR_ANALYZE_AFTER_ROWS writes (fhir_server/storage/statistics.py).

{table(["resources", "load took", "searched", "p50 ms", "p95 ms"], rows)}"""
    print(body)
    if not args.quick:
        write_section("fresh-plans", body)


if __name__ == "__main__":
    main()

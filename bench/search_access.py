"""What the token's patient-compartment filter costs inside search SQL (issue 4 point 7), on PostgreSQL.

Loads patients with Observations through the server's own write path (transaction Bundles, in-process),
then times the same searches in-process (no HTTP, so the SQL filter is what differs) three ways:
without a token and the patient named in the query (``Observation?subject=X&code=C``), with a
patient-scoped token for X and no patient in the query (``Observation?code=C``: the filter does the work),
and without a token over everyone (reference). Wall time and this process's CPU per search; the machine is
shared, so CPU is the steadier number. Writes the ``search access`` section of RESULTS.md.

    .venv/bin/python bench/search_access.py                 # 2,000 patients x 25 Observations
    .venv/bin/python bench/search_access.py --patients 200 --quick
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_database, facts_markdown, log, machine_facts, percentile, table, write_section

CODES = ["8867-4", "8480-6", "8462-4", "29463-7", "2339-0"]
HEADERS = ["search", "token", "results", "p50 ms", "p95 ms", "CPU ms/search (this process)"]


def _bundle(rng: random.Random, per_patient: int) -> tuple[str, dict[str, Any]]:
    pid = str(uuid.uuid4())
    entries: list[dict[str, Any]] = [{"resource": {"resourceType": "Patient", "id": pid, "gender": "female"},
                                      "request": {"method": "PUT", "url": f"Patient/{pid}"}}]
    for _ in range(per_patient):
        entries.append({"resource": {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": rng.choice(CODES)}]},
            "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {"value": rng.randint(40, 180), "system": "http://unitsofmeasure.org", "code": "mg"}},
            "request": {"method": "POST", "url": "Observation"}})
    return pid, {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--per-patient", type=int, default=25)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="smoke run; RESULTS.md is left alone")
    args = ap.parse_args()

    import orjson

    from fhir_server.auth.access import AccessContext
    from fhir_server.auth.scopes import resource_scopes
    from fhir_server.config import Settings
    from fhir_server.rest.request import FhirRequest
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.access import as_system
    from fhir_server.storage.migrate import upgrade

    rng = random.Random(7)
    with bench_database("access") as url:
        settings = Settings(database_url=url, outbox_dispatcher=False)
        fhir = FhirServer(settings)
        upgrade(fhir.engine)
        log(f"loading {args.patients} patients x {args.per_patient} Observations")
        t0 = time.perf_counter()
        pids = []
        for _ in range(args.patients):
            pid, bundle = _bundle(rng, args.per_patient)
            resp = fhir.handle(FhirRequest("POST", "", body=orjson.dumps(bundle),
                                           headers={"content-type": "application/fhir+json"},
                                           access=as_system("benchmark set-up")))
            assert resp.status == 200, resp.resource
            pids.append(pid)
        log(f"  loaded in {time.perf_counter() - t0:.0f} s")
        with fhir.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")

        def token(pid: str) -> AccessContext:
            return AccessContext(tuple(resource_scopes("patient/*.rs")), "doctor", pid)

        cases: list[tuple[str, str, Callable[[str], tuple[str, list[tuple[str, str]], AccessContext | None]]]] = [
            ("Observation?subject=X&code=C", "none", lambda p: (
                "Observation", [("subject", f"Patient/{p}"), ("code", rng.choice(CODES))], None)),
            ("Observation?code=C", "patient X", lambda p: ("Observation", [("code", rng.choice(CODES))], token(p))),
            ("Observation?code=C", "none", lambda p: ("Observation", [("code", rng.choice(CODES))], None)),
            ("Observation?subject=X&_total=accurate", "none", lambda p: (
                "Observation", [("subject", f"Patient/{p}"), ("_total", "accurate")], None)),
            ("Observation?_total=accurate", "patient X", lambda p: (
                "Observation", [("_total", "accurate")], token(p))),
            ("Patient?_id=X&_has:Observation:subject:code=C", "none", lambda p: (
                "Patient", [("_id", p), ("_has:Observation:subject:code", rng.choice(CODES))], None)),
            ("Patient?_has:Observation:subject:code=C", "patient X", lambda p: (
                "Patient", [("_has:Observation:subject:code", rng.choice(CODES))], token(p))),
        ]
        rows = []
        for label, who, make in cases:
            walls, results = [], 0
            cpu0 = time.process_time()
            for i in range(args.runs):
                path, query, access = make(rng.choice(pids))
                req = FhirRequest("GET", path, query=query, access=access)
                t = time.perf_counter()
                resp = fhir.handle(req)
                walls.append(time.perf_counter() - t)
                assert resp.status == 200, resp.resource
                if i == 0:
                    results = len((resp.resource or {}).get("entry", []))
            cpu = (time.process_time() - cpu0) / args.runs
            rows.append([label, who, results, f"{percentile(walls, 50) * 1000:.1f}",
                         f"{percentile(walls, 95) * 1000:.1f}", f"{cpu * 1000:.2f}"])
            log(f"  {label} ({who}): p50 {rows[-1][3]} ms, p95 {rows[-1][4]} ms")
        facts = machine_facts(url)
        fhir.engine.dispose()
    body = (f"{args.patients:,} Patients x {args.per_patient} Observations on PostgreSQL, in-process searches "
            f"({args.runs} each, random patient and code), machine shared with other sessions.\n\n"
            f"{table(HEADERS, rows)}\n\n{facts_markdown(facts)}\n")
    print(body)
    if not args.quick:
        write_section("search access", body)


if __name__ == "__main__":
    main()

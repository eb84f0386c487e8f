"""The dashboard's reports (issue 18 item 9) on a demo hospital plus many Observations, on PostgreSQL.

    python bench/reports.py [--database-url URL] [--patients 500] [--observations 1000000] [--runs 5]

Without --database-url: a fresh bench database, the demo hospital written into it by ``seed-demo``'s code
(through every rule; slow on a loaded machine), then the Observations. With it: an existing database (e.g. one
``fhir-server seed-demo`` has filled); Observations are added up to the count asked for. The Observations are
COPYed (resource rows and their search index rows: date, subject, status, category, code, written as the
indexer writes them) since 1M through the API would take hours here; the reports never read their JSON, but
they share the index tables the reports aggregate over. Each report is then run ``--runs`` times in-process
(Measure/$evaluate-measure through FhirServer.handle, as an admin), over the last year; the median is printed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
from common import bench_database, libpq, log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.auth.access import AccessContext
from fhir_server.auth.scopes import resource_scopes
from fhir_server.config import Settings
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.search.values import hash64
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade
from fhir_server.workflows.reports import REPORTS

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CODES = ("8867-4", "29463-7", "718-7", "2823-3", "2345-7", "8480-6")


def _token(rid: str, param: str, system: str | None, code: str) -> str:
    null = chr(92) + "N"  # COPY's NULL
    return (f"Observation\t{rid}\t{param}\t{system or null}\t{code}\t{null}\t{hash64('Observation', param, code)}\t"
            f"{hash64('Observation', param, system, code)}\t{hash64('Observation', param, system)}\n")


def add_observations(url: str, total: int, seed: int) -> int:
    """COPY Observations (with their index rows) until the database holds ``total``; returns how many it adds."""
    with psycopg.connect(libpq(url)) as conn:
        have = conn.execute("SELECT count(*) FROM resource WHERE resource_type = 'Observation'").fetchone()
        patients = [r[0] for r in conn.execute("SELECT id FROM resource WHERE resource_type = 'Patient'")]
    missing = total - int(have[0] if have else 0)
    if missing <= 0 or not patients:
        return 0
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=365)
    batch = 100_000
    with psycopg.connect(libpq(url)) as conn:
        for first in range(0, missing, batch):
            res, dates, refs, tokens = [], [], [], []
            for n in range(first, min(first + batch, missing)):
                rid = f"bench-obs-{seed}-{n}"
                when = start + timedelta(seconds=rng.randrange(365 * 86400))
                pid, code = rng.choice(patients), rng.choice(CODES)
                stamp = when.isoformat(timespec="seconds").replace("+00:00", "Z")
                cat = "vital-signs" if code in ("8867-4", "29463-7", "8480-6") else "laboratory"
                content = {"resourceType": "Observation", "id": rid, "meta": {"versionId": "1", "lastUpdated": stamp},
                           "status": "final", "category": [{"coding": [{"system": CATEGORY, "code": cat}]}],
                           "code": {"coding": [{"system": LOINC, "code": code}]},
                           "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": stamp,
                           "valueQuantity": {"value": round(rng.uniform(1, 150), 1)}}
                res.append(f"Observation\t{rid}\t1\t{when.isoformat()}\tf\t"
                           f"{orjson.dumps(content).decode().replace(chr(92), chr(92) * 2)}\n")
                dates.append(f"Observation\t{rid}\tdate\t{when.isoformat()}\t{when.isoformat()}\n")
                refs.append(f"Observation\t{rid}\tsubject\tPatient\t{pid}\t\\N\n")
                refs.append(f"Observation\t{rid}\tpatient\tPatient\t{pid}\t\\N\n")
                tokens += [_token(rid, "status", None, "final"),
                           _token(rid, "category", CATEGORY, cat), _token(rid, "code", LOINC, code)]
            with conn.cursor() as cur:
                for table, columns, lines in (
                        ("resource", "resource_type, id, version_id, last_updated, deleted, content", res),
                        ("search_date", "resource_type, resource_id, param, low, high", dates),
                        ("search_reference", "resource_type, resource_id, param, target_type, target_id, target_url",
                         refs),
                        ("search_token", "resource_type, resource_id, param, system, code, text_norm, hash_value, "
                                         "hash_sys_value, hash_sys", tokens)):
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for line in lines:
                            copy.write(line)
            conn.commit()
            log(f"observations: {min(first + batch, missing)}/{missing}")
        conn.execute("ANALYZE")
    return missing


def run_reports(url: str, runs: int) -> dict[str, list[float]]:
    settings = Settings(database_url=url, workflows="reports", outbox_dispatcher=False, audit_enabled=False)
    server = FhirServer(settings, make_engine(settings))
    admin = AccessContext(tuple(resource_scopes("user/*.cruds")), "admin")
    end = datetime.now(UTC).date()
    period = [("periodStart", (end - timedelta(days=365)).isoformat()), ("periodEnd", end.isoformat())]
    times: dict[str, list[float]] = {}
    for name in REPORTS:
        for _ in range(runs):
            req = FhirRequest("GET", "Measure/$evaluate-measure", [("measure", name), *period], {}, None, access=admin)
            t0 = time.perf_counter()
            res = server.handle(req)
            times.setdefault(name, []).append(time.perf_counter() - t0)
            assert res.status == 200, res.resource
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an existing (seeded) PostgreSQL database")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    def bench(url: str) -> None:
        settings = Settings(database_url=url, workflows="all", outbox_dispatcher=False)
        engine = make_engine(settings)
        upgrade(engine)
        with psycopg.connect(libpq(url)) as conn:
            row = conn.execute("SELECT count(*) FROM resource WHERE resource_type = 'Patient'").fetchone()
        if not row or not row[0]:
            from fhir_server.workflows.demo.seed import seed
            t0 = time.perf_counter()
            seed(FhirServer(settings, engine), seed=args.seed, patients=args.patients)
            log(f"seed-demo {args.patients} patients: {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        added = add_observations(url, args.observations, args.seed)
        log(f"added {added} Observations in {time.perf_counter() - t0:.0f} s")
        with psycopg.connect(libpq(url)) as conn:
            sizes = dict(conn.execute("SELECT resource_type, count(*) FROM resource GROUP BY 1").fetchall())
        print(f"resources: {sum(sizes.values())} (Observation {sizes.get('Observation', 0)}, Patient "
              f"{sizes.get('Patient', 0)}, Encounter {sizes.get('Encounter', 0)}, Appointment "
              f"{sizes.get('Appointment', 0)}, Slot {sizes.get('Slot', 0)})")
        for name, seconds in run_reports(url, args.runs).items():
            print(f"{name:22} median {statistics.median(seconds) * 1000:7.1f} ms   max {max(seconds) * 1000:7.1f} ms")

    if args.database_url:
        bench(args.database_url)
    else:
        with bench_database("reports") as url:
            bench(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The peer workload of issue 19, against any FHIR R4 base URL (ours or another server), so the comparison
can be repeated by anyone:

1. ingest: transaction Bundles of 1 Patient + 20 Observations (``urn:uuid:`` references) from 4 clients;
2. search: ``Observation?patient=&code=&date=ge`` one at a time (one client);
3. read: ``Observation/{id}`` and ``Patient/{id}`` one at a time;
4. metadata: ``metadata`` and ``metadata?_summary=true``.

    .venv/bin/python bench/peer.py                          # ours: a throwaway PostgreSQL database and a
                                                            # `fhir-server serve --workers 2`; RESULTS.md
    .venv/bin/python bench/peer.py --base-url http://127.0.0.1:8103/fhir/R4 --token TOKEN [--server-pid PID]

Against another server only the client's view is measured (latency, rates), plus the CPU of ``--server-pid``
and its children when given (psutil). Against ours the CPU of the server processes and of the bench
database's PostgreSQL backends is measured per request (contention-proof), and the table is written to the
``peer`` section of RESULTS.md (``--quick`` or ``--base-url``: printed only).
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

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

# A laboratory panel's worth of LOINC codes: each patient gets 20 Observations drawn from these.
CODES = [("718-7", "Hemoglobin", "g/dL", 13.5), ("2345-7", "Glucose", "mg/dL", 95.0),
         ("2160-0", "Creatinine", "mg/dL", 1.0), ("2951-2", "Sodium", "mmol/L", 140.0),
         ("2823-3", "Potassium", "mmol/L", 4.2), ("6690-2", "Leukocytes", "10*3/uL", 7.0),
         ("777-3", "Platelets", "10*3/uL", 250.0), ("4548-4", "Hemoglobin A1c", "%", 5.6),
         ("8480-6", "Systolic blood pressure", "mm[Hg]", 120.0), ("8462-4", "Diastolic blood pressure",
                                                                 "mm[Hg]", 80.0)]
FIRST_DAY = date(2024, 1, 1)
HEADERS = ["phase", "requests", "requests/s", "p50 ms", "p95 ms", "p99 ms", "server CPU ms/req",
           "PostgreSQL CPU ms/req", "errors"]


@dataclass
class Patient:
    id: str
    codes: list[str]
    observation_ids: list[str]


def patient_bundle(rng: random.Random, observations: int) -> dict[str, Any]:
    """One transaction: a Patient and its Observations, which refer to it by ``urn:uuid:``."""
    patient_url = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}"
    family = rng.choice(["Sharma", "Patel", "Iyer", "Khan", "Reddy", "Singh", "Das", "Nair"])
    entries: list[dict[str, Any]] = [{
        "fullUrl": patient_url,
        "resource": {"resourceType": "Patient", "active": True,
                     "identifier": [{"system": "urn:bench:peer:mrn", "value": uuid.UUID(int=rng.getrandbits(128)).hex}],
                     "name": [{"family": family, "given": [rng.choice(["Asha", "Ravi", "Meera", "Arjun"])]}],
                     "gender": rng.choice(["female", "male"]),
                     "birthDate": (date(1940, 1, 1) + timedelta(days=rng.randrange(30_000))).isoformat()},
        "request": {"method": "POST", "url": "Patient"}}]
    for _ in range(observations):
        code, display, unit, mean = rng.choice(CODES)
        when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(2 * 365 * 24 * 60))
        entries.append({
            "fullUrl": f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}",
            "resource": {"resourceType": "Observation", "status": "final",
                         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                                   "code": "laboratory"}]}],
                         "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                         "subject": {"reference": patient_url},
                         "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
                         "valueQuantity": {"value": round(rng.gauss(mean, mean / 10), 2), "unit": unit,
                                           "system": "http://unitsofmeasure.org", "code": unit}},
            "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def ingest_job(bundle: dict[str, Any], made: list[Patient]) -> Callable[[httpx.Client], int]:
    body = orjson.dumps(bundle)
    codes = [e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"][1:]]

    def job(client: httpx.Client) -> int:
        resp = client.post("", content=body, headers={"content-type": "application/fhir+json"})
        if resp.status_code != 200:
            raise RuntimeError(f"transaction: HTTP {resp.status_code}: {resp.text[:200]}")
        # Location: [base/]Type/id/_history/v; the ids let the later phases ask for what was stored.
        ids = [e["response"]["location"].split("/_history")[0].rsplit("/", 1)[-1]
               for e in orjson.loads(resp.content)["entry"]]
        made.append(Patient(ids[0], codes, ids[1:]))  # list.append is atomic: the client threads share it
        return len(ids)

    return job


def get_job(path: str, check: Callable[[dict[str, Any]], bool] | None = None) -> Callable[[httpx.Client], int]:
    def job(client: httpx.Client) -> int:
        resp = client.get(path)
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status_code}")
        if check is not None and not check(orjson.loads(resp.content)):
            raise RuntimeError(f"GET {path}: unexpected answer")
        return 1

    return job


def is_bundle(bundle: dict[str, Any]) -> bool:
    return bundle.get("resourceType") == "Bundle"


def search_jobs(rng: random.Random, patients: list[Patient], n: int) -> list[Callable[[httpx.Client], int]]:
    """Observation?patient=&code=&date=ge: a code the patient has, from a date in the first half of the span
    (so most answers hold a few Observations)."""
    jobs = []
    for _ in range(n):
        p = rng.choice(patients)
        since = FIRST_DAY + timedelta(days=rng.randrange(60))
        jobs.append(get_job(f"Observation?patient=Patient/{p.id}&code=http://loinc.org|{rng.choice(p.codes)}"
                            f"&date=ge{since.isoformat()}", is_bundle))
    return jobs


def read_jobs(rng: random.Random, patients: list[Patient], n: int) -> list[Callable[[httpx.Client], int]]:
    jobs = []
    for i in range(n):
        p = rng.choice(patients)
        jobs.append(get_job(f"Patient/{p.id}" if i % 4 == 0 else f"Observation/{rng.choice(p.observation_ids)}"))
    return jobs


class Meter:
    """CPU of the server under test: ours (process tree + its PostgreSQL backends, common.CpuMeter), another
    local one by pid (psutil, with its children), or nothing (a remote server)."""

    def __init__(self, ours: CpuMeter | None, pid: int | None) -> None:
        self.ours, self.pid = ours, pid
        self.server = self.postgres = 0.0
        self._before = 0.0

    def _tree_cpu(self) -> float:
        assert self.pid is not None
        root = psutil.Process(self.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self.ours is not None:
            self.ours.start()
        elif self.pid is not None:
            self._before = self._tree_cpu()
        yield
        if self.ours is not None:
            self.ours.stop()
            self.server, self.postgres = self.ours.server, self.ours.postgres
        elif self.pid is not None:
            self.server, self.postgres = self._tree_cpu() - self._before, float("nan")
        else:
            self.server = self.postgres = float("nan")


def row(phase: str, r: LoadResult, meter: Meter, units: int | None = None) -> list[Any]:
    n = max(1, units if units is not None else r.jobs_done)
    rate = n / r.wall if r.wall else 0.0
    return [phase, r.jobs_done, f"{rate:,.0f}", ms(percentile(r.latencies, 50)),
            f"**{ms(percentile(r.latencies, 95))}**", ms(percentile(r.latencies, 99)),
            f"{meter.server * 1000 / n:.2f}", f"{meter.postgres * 1000 / n:.2f}", len(r.errors)]


def run_workload(base: str, token: str | None, meter: Meter, args: argparse.Namespace,
                 analyze: Callable[[], None] | None = None) -> list[list[Any]]:
    """The phases; ``analyze`` (ours): give PostgreSQL statistics after the fresh-data searches, and search
    again, so both the first searches after a load and the steady state are measured."""
    rng = random.Random(args.seed)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    rows: list[list[Any]] = []

    def load(jobs: list[Callable[[httpx.Client], int]], clients: int) -> LoadResult:
        result = run_load(base, [authorised(j, headers) for j in jobs], clients, max_seconds=args.max_seconds)
        for error in result.errors[:3]:
            log(f"  error: {error}")
        return result

    made: list[Patient] = []
    bundles = [patient_bundle(rng, args.observations) for _ in range(args.patients)]
    load([ingest_job(b, made) for b in bundles[:8]], args.clients)  # warm-up: connections, caches
    with meter.measure():
        ingest = load([ingest_job(b, made) for b in bundles[8:]], args.clients)
    rows.append(row(f"ingest: Bundle of 1 Patient + {args.observations} Observations, {args.clients} clients, "
                    "per resource (p50/p95 per Bundle)", ingest, meter, ingest.units))
    log(f"ingested {ingest.units:,} resources in {ingest.wall:.1f}s")
    if not made:
        raise SystemExit("nothing was stored; the later phases need the ingested patients")
    phases: list[tuple[str, Callable[..., list[Callable[[httpx.Client], int]]], int]] = [
        ("search: Observation?patient&code&date=ge, 1 client", search_jobs, args.searches)]
    if analyze is not None:
        phases += [("search, once the tables have planner statistics (ANALYZE)", search_jobs, args.searches)]
    phases += [("read: Observation/id (3/4) and Patient/id (1/4), 1 client", read_jobs, args.reads)]
    for phase, make, n in phases:
        if "ANALYZE" in phase and analyze is not None:
            analyze()
        load(make(rng, made, 50), 1)  # warm-up
        with meter.measure():
            result = load(make(rng, made, n), 1)
        rows.append(row(phase, result, meter))
        print(table(HEADERS, [rows[-1]]), flush=True)
    for path in ("metadata", "metadata?_summary=true"):
        load([get_job(path)] * 20, 1)
        with meter.measure():
            result = load([get_job(path)] * args.metadata, 1)
        rows.append(row(f"{path}, 1 client", result, meter))
        print(table(HEADERS, [rows[-1]]), flush=True)
    return rows


def authorised(job: Callable[[httpx.Client], int], headers: dict[str, str]) -> Callable[[httpx.Client], int]:
    if not headers:
        return job

    def with_token(client: httpx.Client) -> int:
        client.headers.update(headers)
        return job(client)

    return with_token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a FHIR base URL to measure (default: start ours on PostgreSQL)")
    parser.add_argument("--token", help="bearer token sent with every request")
    parser.add_argument("--server-pid", type=int, help="a local server's pid: its CPU (and its children's) per request")
    parser.add_argument("--workers", type=int, default=2, help="ours: `serve --workers N`")
    parser.add_argument("--patients", type=int, default=None, help="transaction Bundles (one Patient each)")
    parser.add_argument("--observations", type=int, default=20, help="Observations per Patient")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients for the ingest")
    parser.add_argument("--searches", type=int, default=None)
    parser.add_argument("--reads", type=int, default=None)
    parser.add_argument("--metadata", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="deadline per phase")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--quick", action="store_true", help="smoke run; RESULTS.md is not written")
    args = parser.parse_args(argv)
    sizes = (("patients", 200, 24), ("searches", 1000, 100), ("reads", 1000, 100), ("metadata", 200, 20))
    for name, full, quick in sizes:
        if getattr(args, name) is None:  # --quick: small defaults; a number given still counts
            setattr(args, name, quick if args.quick else full)
    if args.base_url:
        meter = Meter(None, args.server_pid)
        rows = run_workload(args.base_url.rstrip("/"), args.token, meter, args)
        print(table(HEADERS, rows))
        return 0 if all(r[-1] == 0 for r in rows) else 1
    with bench_database("peer") as url:
        facts = machine_facts(url)
        with fhir_server(url, args.workers) as server:
            log(f"server up (--workers {args.workers}) at {server.base}")
            rows = run_workload(server.base, None, Meter(CpuMeter(server.process.pid, url), None), args,
                                analyze=lambda: analyze_tables(url))
    report = render(rows, facts, args)
    print(report)
    if not args.quick:
        write_section("peer", report)
        log("wrote the peer section of bench/RESULTS.md")
    return 0 if all(r[-1] == 0 for r in rows) else 1


def analyze_tables(url: str) -> None:
    """What the server's own Analyzer does past FHIR_ANALYZE_AFTER_ROWS (20,000) written rows, or autovacuum
    a minute later: the peer workload's 4,000 resources are below both."""
    from fhir_server.config import Settings
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.statistics import analyze

    engine = make_engine(Settings(database_url=url))
    try:
        analyze(engine)
    finally:
        engine.dispose()


def render(rows: list[list[Any]], facts: dict[str, str], args: argparse.Namespace) -> str:
    return f"""## The peer workload against our server (`bench/peer.py`)

{facts_markdown(facts)}

`bench/peer.py --base-url URL [--token T] [--server-pid PID]` runs the same workload against any FHIR R4
server. Here: ours, `fhir-server serve --workers {args.workers}` on a fresh PostgreSQL database. Ingest:
{args.patients - 8} transaction Bundles (after 8 for warm-up) of 1 Patient + {args.observations} Observations
from {args.clients} clients; then one client: {args.searches} searches `Observation?patient=Patient/ID&code=
http://loinc.org|CODE&date=geDATE` (each answer checked to be a Bundle), {args.reads} reads and
{args.metadata} of each `metadata` request, each after 50 (20) warm-up requests. The searches run twice:
right after the load, as any client sees them (the tables have no planner statistics yet: the server
analyses past 20,000 written rows, autovacuum later), and after an ANALYZE (the steady state). The dataset is
{args.patients * (1 + args.observations):,} resources. CPU ms/req: CPU time of the server's processes and of
the bench database's PostgreSQL backends per request (per resource for the ingest), which other load on
the machine barely moves; latency is wall time seen by the client, which it does.

{table(HEADERS, rows)}
"""


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU of the generic write path, one interaction per unit of work (issue 18 item 10: cutting the seed's CPU
must not make a single write dearer). In-process (``FhirServer.handle``, no HTTP), a fresh PostgreSQL database,
workflows off: CPU of this process (Python) and of the PostgreSQL backends serving it, per interaction, for
single creates, single updates (PUT of a stored resource), and transaction Bundles of 1 Patient + 10
Observations that also update the Patient they create. Writes the ``write-cpu`` section of RESULTS.md.

    .venv/bin/python bench/write_cpu.py            # ~1 minute
    .venv/bin/python bench/write_cpu.py --quick    # fewer writes, RESULTS.md left alone
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuMeter, bench_database, facts_markdown, log, machine_facts, table, write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.config import Settings
from fhir_server.rest.server import FhirServer
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade
from fhir_server.workflows.demo.calls import Caller, user

LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"


def observation(i: int, subject: str | None = None) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": UCUM, "code": "/min"},
            "effectiveDateTime": f"2026-01-{1 + i % 28:02d}T10:00:00Z",
            **({"subject": {"reference": subject}} if subject else {})}


def bundle(i: int) -> list[tuple[str, str, dict[str, Any] | None, str | None]]:
    full = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
    patient = {"resourceType": "Patient", "name": [{"family": f"Write{i}", "given": ["Cpu"]}], "gender": "female"}
    return [("POST", "Patient", patient, full),
            *[("POST", "Observation", observation(i * 10 + j, full), None) for j in range(10)]]


def measure(url: str, n: int) -> dict[str, tuple[float, float]]:
    settings = Settings(database_url=url, outbox_dispatcher=False, audit_enabled=False)
    engine = make_engine(settings)
    upgrade(engine)
    calls, admin = Caller(FhirServer(settings, engine)), user("admin")
    for i in range(20):  # warm: compiled plans, registry, UCUM
        calls.call(admin, "POST", "Observation", observation(i))
    out: dict[str, tuple[float, float]] = {}

    def timed(name: str, count: int, work: Callable[[], Any]) -> Any:
        meter = CpuMeter(os.getpid(), url)
        meter.start()
        result = work()
        meter.stop()
        out[name] = (meter.client / count, meter.postgres / count)
        return result

    ids = timed("create (POST Observation)", n,
                lambda: [calls.call(admin, "POST", "Observation", observation(i))["id"] for i in range(n)])
    timed("update (PUT Observation)", n, lambda: [calls.call(admin, "PUT", f"Observation/{rid}",
                                                             {**observation(i + 1), "id": rid})
                                                  for i, rid in enumerate(ids)])
    timed("transaction Bundle: 1 Patient + 10 Observations", n // 10,
          lambda: [calls.transaction(admin, bundle(i)) for i in range(n // 10)])
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 writes, printed only")
    args = parser.parse_args()
    n = 200 if args.quick else args.writes
    with bench_database("write_cpu") as url:
        facts = machine_facts(url)
        log(f"write CPU: {n} creates, {n} updates, {n // 10} Bundles")
        m = measure(url, n)
    rows = [(name, f"{py * 1000:.2f}", f"{pg * 1000:.2f}", f"{(py + pg) * 1000:.2f}") for name, (py, pg) in m.items()]
    result = table(["interaction (one unit of work each)", "Python CPU ms", "PostgreSQL CPU ms", "total ms"], rows)
    print(result)
    if args.quick:
        return
    write_section("write-cpu", f"""## CPU of single writes (`bench/write_cpu.py`)

Issue 18 item 10 cut the seed-demo's CPU in the generic write path (one statement per flush on PostgreSQL,
versions read or written in the transaction not read again, a replaced version's UPDATE and index deletions
sent with the next flush); this checks a single write did not get dearer. In-process (`FhirServer.handle`),
workflows and audit off, {n} creates, {n} updates, {n // 10} Bundles. Run: `.venv/bin/python bench/write_cpu.py`.
Before that change (commit c7463b0, same script, interleaved on a loaded machine): create 2.9-3.6 ms Python +
1.4-1.7 ms PostgreSQL; update 5.5-5.6 + 3.3-3.4 ms.

{result}

{facts_markdown(facts)}
""")


if __name__ == "__main__":
    main()

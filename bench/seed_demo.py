"""`fhir-server seed-demo` speed (issue 18 item 10: 500 patients in under a minute on PostgreSQL).

Runs what the command runs (``write_demo``: the hospital through every workflow rule, each step as its role,
the groups of patients written by ``--workers`` processes; the run's AuditEvent; ANALYZE; the 8 demo users)
in-process on a fresh PostgreSQL database, and measures wall time and CPU time: this process (Python), its
worker processes (RUSAGE_CHILDREN: they are joined before write_demo returns) and the PostgreSQL backends
serving the database, so the figures stay comparable on the loaded shared machine. Also counted: SQL
statements and transactions (SQLAlchemy's, this process only), rows PostgreSQL inserted (pg_stat_database;
COPY included), resources written.
Usage: .venv/bin/python bench/seed_demo.py [--patients 500] [--seed 1] [--workers N: default the command's, 2]
       [--quick: 25 patients, RESULTS.md left alone]
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from common import (
    _proc_stat,
    bench_database,
    facts_markdown,
    libpq,
    log,
    machine_facts,
    table,
    write_section,
)
from sqlalchemy import event

from fhir_server.config import Settings
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade
from fhir_server.workflows.demo import write_demo


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving one database, polled so that a backend which ends
    between two samples (a pool connection closed) still counts what it used up to the last poll."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.at_start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> dict[int, float]:
        with psycopg.connect(libpq(self.url)) as conn:
            pids = [int(r[0]) for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        found = {pid: stat[1] for pid in pids if (stat := _proc_stat(pid)) is not None}
        self.last.update(found)
        return found

    def _poll(self) -> None:
        while not self._stop.wait(0.25):  # a worker's backends end with it: poll often to miss little
            self._sample()

    def start(self) -> None:
        self.at_start = self._sample()
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        # a backend started during the run (a new pool connection) counts from zero
        return sum(cpu - self.at_start.get(pid, 0.0) for pid, cpu in self.last.items())


def inserted(url: str) -> tuple[int, int]:
    """(rows inserted, transactions committed) in the database so far, as PostgreSQL counts them."""
    with psycopg.connect(libpq(url)) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute("SELECT tup_inserted, xact_commit FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def measure(url: str, patients: int, seed: int, workers: int | None) -> dict[str, Any]:
    settings = Settings(database_url=url)
    engine = make_engine(settings)
    upgrade(engine)
    counted = {"statements": 0, "transactions": 0}

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(*_args: Any) -> None:
        counted["statements"] += 1

    @event.listens_for(engine, "commit")
    def _commit(*_args: Any) -> None:
        counted["transactions"] += 1

    with engine.connect() as conn:  # the pool's first connection exists before the meter starts
        conn.exec_driver_sql("SELECT 1")
    backends = BackendCpu(url)
    backends.start()
    rows_before, _ = inserted(url)
    wall, cpu, children = time.perf_counter(), time.process_time(), children_cpu()
    demo = write_demo(settings, engine, seed=seed, patients=patients, workers=workers)
    wall, cpu, children = time.perf_counter() - wall, time.process_time() - cpu, children_cpu() - children
    postgres = backends.stop()
    rows_after, _ = inserted(url)
    with psycopg.connect(libpq(url)) as conn:
        resources = {str(t): int(n) for t, n in conn.execute(
            "SELECT resource_type, count(*) FROM resource GROUP BY 1 ORDER BY 2 DESC")}
        audit = resources.get("AuditEvent", 0)
    engine.dispose()
    return {"wall": wall, "python": cpu, "children": children, "postgres": postgres, "rows": rows_after - rows_before,
            "resources": resources, "audit": audit, "counts": demo.hospital.counts, "workers": demo.hospital.workers,
            "waited": demo.hospital.waited,
            **counted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None, help="processes writing the patients (default: the "
                                                                   "command's, 2 on PostgreSQL)")
    parser.add_argument("--quick", action="store_true", help="25 patients, printed only (RESULTS.md left alone)")
    args = parser.parse_args()
    if args.quick:
        args.patients = 25
    with bench_database("seed_demo") as url:
        facts = machine_facts(url)
        log(f"seed-demo --patients {args.patients} --seed {args.seed} --workers {args.workers or 'default'} "
            "on a fresh database")
        m = measure(url, args.patients, args.seed, args.workers)
    n = args.patients
    workers = m["workers"]
    total = m["python"] + m["children"] + m["postgres"]
    written = sum(m["resources"].values())
    rows = [
        ("wall time", f"{m['wall']:.1f} s", f"{m['wall'] / n * 1000:.0f} ms"),
        ("worker processes (this one included)", f"{workers}", ""),
        ("CPU: this process (Python)", f"{m['python']:.1f} s", f"{m['python'] / n * 1000:.0f} ms"),
        ("CPU: the other workers (Python)", f"{m['children']:.1f} s", f"{m['children'] / n * 1000:.0f} ms"),
        ("waiting for a turn (registration, check-in, dispensing; all workers)", f"{m['waited']:.1f} s",
         f"{m['waited'] / n * 1000:.0f} ms"),
        ("CPU: PostgreSQL backends", f"{m['postgres']:.1f} s", f"{m['postgres'] / n * 1000:.0f} ms"),
        ("CPU: total", f"{total:.1f} s", f"{total / n * 1000:.0f} ms"),
        ("SQL statements (this process; COPYs not included)", f"{m['statements']:,}", f"{m['statements'] / n:.0f}"),
        ("transactions committed (this process)", f"{m['transactions']:,}", f"{m['transactions'] / n:.2f}"),
        ("rows inserted (pg_stat_database; index rows included)", f"{m['rows']:,}", f"{m['rows'] / n:.0f}"),
        ("resources written (current versions)", f"{written:,}", f"{written / n:.1f}"),
        ("AuditEvents", f"{m['audit']}", ""),
    ]
    result = table(["seed-demo", f"{n} patients", "per patient"], rows)
    print(result)
    print(", ".join(f"{v} {k}" for k, v in m["counts"].items()))
    if args.quick:
        return
    kinds = ", ".join(f"{count:,} {rtype}" for rtype, count in m["resources"].items())
    body = f"""## `fhir-server seed-demo` speed (`bench/seed_demo.py`)

Goal (issue 18 item 10): 500 patients in under a minute on PostgreSQL. What the command does, in-process on a
fresh database: the hospital written through every workflow rule (each step as its role, transaction Bundles
per step of 25 patients; the groups of 25 shared by {workers} worker process(es), parallel.py), one AuditEvent
for the run, ANALYZE, the 8 demo users (argon2 once each).
Run: `.venv/bin/python bench/seed_demo.py --patients {n}{f" --workers {args.workers}" if args.workers else ""}`
(seed {args.seed}; defaults: 500 patients, seed 1, the command's workers: 2 on PostgreSQL).

{facts_markdown(facts)}

Dataset: {n} patients; seed-demo's counts: {", ".join(f"{v} {k}" for k, v in m["counts"].items())}.
Resources: {kinds}.

{result}

The wall time moves with the machine's load; the CPU figures barely do (CPU total = this process, the other
workers and the PostgreSQL backends). One worker: on an idle machine the wall time is about the CPU total,
since each statement waits for its answer; two workers on 2 cores: about half of it, plus the setup (about 3 s,
one process) and the steps taken in group order (registration, check-in, dispensing: a group waits for the
groups before it there).
"""
    write_section("seed-demo", body)
    log("bench/RESULTS.md: section seed-demo written")


if __name__ == "__main__":
    main()

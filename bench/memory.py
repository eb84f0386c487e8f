"""Memory of ``fhir-server serve --workers 2`` on PostgreSQL (issue 19 goal 5): RSS, USS and PSS of every
process of the server (psutil ``memory_full_info``) idle after start, through an 8-client mixed load of 60 s
(transaction Bundles, reads, searches, metadata), and idle again after it; growth after warm-up is the
workers' RSS at the end of the load against 20 s into it. Writes the ``memory`` section of RESULTS.md.

    .venv/bin/python bench/memory.py [--seconds 60] [--clients 8] [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_database, facts_markdown, fhir_server, log, machine_facts, run_load, table, write_section
from peer import Patient, get_job, ingest_job, patient_bundle, read_jobs, search_jobs

MB = 2**20
GOAL_WORKER_IDLE, GOAL_WORKER_PEAK, GOAL_TOTAL_IDLE = 150, 300, 350


@dataclass
class Sample:
    rss: float
    uss: float
    pss: float


@dataclass
class Track:
    role: str
    samples: list[tuple[float, Sample]] = field(default_factory=list)


def snapshot(root: int) -> dict[int, tuple[str, Sample]]:
    """Every process of the server: the supervisor and its descendants, with what they are."""
    out: dict[int, tuple[str, Sample]] = {}
    top = psutil.Process(root)
    for p in [top, *top.children(recursive=True)]:
        try:
            m = p.memory_full_info()
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = "supervisor" if p.pid == root else "worker" if "multiprocessing" in cmd or (p.ppid() == root \
            and "resource_tracker" not in cmd) else "helper"
        if "resource_tracker" in cmd:
            role = "helper (multiprocessing resource tracker)"
        out[p.pid] = (role, Sample(m.rss / MB, m.uss / MB, m.pss / MB))
    return out


def rows_for(label: str, snap: dict[int, tuple[str, Sample]]) -> list[list[Any]]:
    rows = [[label, role, pid, f"{s.rss:.0f}", f"{s.uss:.0f}", f"{s.pss:.0f}"]
            for pid, (role, s) in sorted(snap.items(), key=lambda kv: (kv[1][0] != "supervisor", kv[0]))]
    total = [s for _r, s in snap.values()]
    rows.append([label, "**whole server**", "", f"{sum(s.rss for s in total):.0f}", f"{sum(s.uss for s in total):.0f}",
                 f"**{sum(s.pss for s in total):.0f}**"])
    return rows


def mixed_jobs(rng: random.Random, made: list[Patient], n: int) -> list[Callable[[httpx.Client], int]]:
    """A ward's mix: 5% transaction Bundles (1 Patient + 20 Observations), 45% reads, 40% searches, 10% metadata."""
    jobs: list[Callable[[httpx.Client], int]] = []
    for _ in range(n):
        x = rng.random()
        if x < 0.05:
            jobs.append(ingest_job(patient_bundle(rng, 20), made))
        elif x < 0.50:
            jobs += read_jobs(rng, made, 1)
        elif x < 0.90:
            jobs += search_jobs(rng, made, 1)
        else:
            jobs.append(get_job("metadata"))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="smoke run (15 s); RESULTS.md is not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 15.0
    rng = random.Random(5)
    with bench_database("memory") as url:
        facts = machine_facts(url)
        with fhir_server(url, args.workers) as server:
            root = server.process.pid
            made: list[Patient] = []
            # A few requests so each worker has answered once (what every server does in its first minute).
            run_load(server.base, [ingest_job(patient_bundle(rng, 20), made) for _ in range(8)], 2, max_seconds=60)
            run_load(server.base, read_jobs(rng, made, 20) + search_jobs(rng, made, 20) + [get_job("metadata")] * 4,
                     2, max_seconds=60)
            time.sleep(3)  # let the audit writer's batch and the pools settle before the idle snapshot
            idle = snapshot(root)
            log(f"idle: {[(r, round(s.rss)) for r, s in idle.values()]}")
            tracks: dict[int, Track] = {}
            stop = threading.Event()
            start = time.monotonic()

            def sample() -> None:
                while not stop.is_set():
                    for pid, (role, s) in snapshot(root).items():
                        tracks.setdefault(pid, Track(role)).samples.append((time.monotonic() - start, s))
                    stop.wait(2.0)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            result = run_load(server.base, mixed_jobs(rng, made, 200_000), args.clients, max_seconds=args.seconds)
            stop.set()
            sampler.join()
            log(f"load: {result.jobs_done:,} requests, {len(result.errors)} errors")
            time.sleep(3)
            after = snapshot(root)
    warm = args.seconds / 3
    load_rows = []
    for pid, t in sorted(tracks.items()):
        peak = max((s for _t, s in t.samples), key=lambda s: s.rss)
        at_warm = [s for when, s in t.samples if when >= warm]
        growth = at_warm[-1].rss - at_warm[0].rss if len(at_warm) > 1 else float("nan")
        load_rows.append([t.role, pid, f"{peak.rss:.0f}", f"{peak.uss:.0f}", f"{peak.pss:.0f}",
                          f"{at_warm[0].rss if at_warm else float('nan'):.0f}",
                          f"{at_warm[-1].rss if at_warm else float('nan'):.0f}", f"{growth:+.0f}"])
    workers_idle = [s.rss for r, s in idle.values() if r == "worker"]
    workers_peak = [max(s.rss for _t, s in t.samples) for t in tracks.values() if t.role == "worker"]
    total_idle_pss = sum(s.pss for _r, s in idle.values())
    verdicts = [
        f"worker RSS idle: {', '.join(f'{v:.0f}' for v in workers_idle)} MB (goal <= {GOAL_WORKER_IDLE}): "
        f"{'met' if workers_idle and max(workers_idle) <= GOAL_WORKER_IDLE else 'NOT met'}",
        f"worker RSS peak under load: {', '.join(f'{v:.0f}' for v in workers_peak)} MB (goal <= {GOAL_WORKER_PEAK}): "
        f"{'met' if workers_peak and max(workers_peak) <= GOAL_WORKER_PEAK else 'NOT met'}",
        f"whole server idle, PSS (shared pages counted once): {total_idle_pss:.0f} MB (goal <= {GOAL_TOTAL_IDLE}): "
        f"{'met' if total_idle_pss <= GOAL_TOTAL_IDLE else 'NOT met'}",
    ]
    report = f"""## Memory of `serve --workers {args.workers}` (`bench/memory.py`)

{facts_markdown(facts)}

A real `fhir-server serve --workers {args.workers}` on a fresh PostgreSQL database; RSS, USS (private) and PSS
(private + a share of what is shared) of each of its processes from psutil `memory_full_info`, in MB.
"idle": after 8 transaction Bundles and 44 reads/searches/metadata (every worker has answered) and 3 s of
quiet; "load": {args.clients} clients for {args.seconds:.0f} s of a mixed load ({result.jobs_done:,} requests:
5% transaction Bundles of 1 Patient + 20 Observations, 45% reads, 40% `Observation?patient&code&date`
searches, 10% `metadata`), sampled every 2 s; growth is RSS at the end of the load against {warm:.0f} s into it.

{chr(10).join(f"- {v}" for v in verdicts)}

{table(["when", "process", "pid", "RSS", "USS", "PSS"], rows_for("idle", idle) + rows_for("after the load", after))}

Under the load:

{table(["process", "pid", "peak RSS", "USS at peak", "PSS at peak", f"RSS at {warm:.0f} s", "RSS at end",
        "growth after warm-up"], load_rows)}

Errors during the load: {len(result.errors)}.
"""
    print(report)
    if not args.quick:
        write_section("memory", report)
        log("wrote the memory section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

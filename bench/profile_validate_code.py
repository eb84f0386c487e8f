"""Where one ValueSet/$validate-code over HTTP spends its CPU: the real app (uvicorn, middleware, FastAPI, the
FHIR adapter, audit, unit of work, operation) on PostgreSQL, one keep-alive client, audit on and off.

To see every layer in one profile, the request's thread-pool hop is inlined (the endpoint calls the core on
the event loop thread), so the server's whole share of a request runs on one thread: its CPU is that
thread's CPU time (the client thread, in the same process, is not counted), cProfile runs with a thread-CPU
timer, and the shares are scaled to the unprofiled CPU. The audit writer's CPU is its own thread's, read
from /proc. Wall latencies here are not the ones of bench/terminology.py (client and server share a GIL).
Writes the ``validate-code-profile`` section of RESULTS.md.

    .venv/bin/python bench/profile_validate_code.py            # about a minute
    .venv/bin/python bench/profile_validate_code.py --quick    # smoke run, does not touch RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CLOCK_TICKS,
    CpuMeter,
    bench_database,
    cumulative,
    facts_markdown,
    free_port,
    log,
    machine_facts,
    ms,
    percentile,
    table,
    write_section,
)

GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
GENDER_CS = "http://hl7.org/fhir/administrative-gender"
QUERY = {"url": GENDER_VS, "system": GENDER_CS, "code": "male"}
# Nested calls of one request, outermost first: each layer's own share is its cumulative time minus the next.
CHAIN = [
    ("event loop, HTTP parsing, socket writes (uvicorn)", "asyncio/base_events.py", "_run_once"),
    ("ASGI middleware and routing (FastAPI / Starlette)", "uvicorn/protocols/http/httptools_impl.py", "run_asgi"),
    ("FHIR web adapter (query, token check, negotiation, JSON render)", "fhir_server/api/fhir.py",
     "fhir_endpoint"),
    ("core entry, binary staging", "fhir_server/api/fhir.py", "handle"),
    ("audit, request side (classify, Record, queue put)", "fhir_server/audit/service.py", "handle"),
    ("unit of work (pooled connection, autocommit, return)", "fhir_server/storage/uow.py", "run"),
    ("SearchParameter refresh check", "fhir_server/rest/server.py", "route"),
    ("audit, request side (classify, Record, queue put)", "fhir_server/audit/service.py", "route"),
    ("routing + $validate-code (cached ValueSet and membership)", "fhir_server/rest/router.py", "route"),
    ("terminology generation token (one primary-key read)", "fhir_server/storage/generation.py", "token"),
]


def thread_cpu(native_id: int | None) -> float:
    """CPU seconds of one thread of this process (0 when it does not exist)."""
    if native_id is None:
        return 0.0
    try:
        raw = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run(url: str, audit: bool, requests: int, profile: bool) -> dict[str, Any]:
    import uvicorn

    import fhir_server.api.fhir as fhir_api
    from fhir_server.app import create_app
    from fhir_server.config import Settings
    from fhir_server.rest.server import FhirServer

    async def inline(fn: Any, *args: Any) -> Any:
        return fn(*args)

    fhir_api.run_in_threadpool = inline  # type: ignore[assignment]  # the core on the loop thread (see top)
    settings = Settings(database_url=url, outbox_dispatcher=False, audit_enabled=audit, auth_required=False)
    fhir = FhirServer(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, fhir), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on", access_log=False))
    out: dict[str, Any] = {}
    profiler = cProfile.Profile(time.thread_time)
    loop_thread = threading.main_thread().native_id  # uvicorn's event loop runs on this thread

    def client() -> None:
        try:
            deadline = time.monotonic() + 60
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for uvicorn to start, bounded
            with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir/", timeout=30) as http:
                for _ in range(max(50, requests // 10)):  # warm-up: caches, pool, prepared statements
                    http.get("ValueSet/$validate-code", params=QUERY).raise_for_status()
                recorder = fhir.audit.recorder if fhir.audit is not None else None
                if recorder is not None:
                    recorder.flush()
                writer = recorder._thread.native_id if recorder and recorder._thread else None
                meter = CpuMeter(os.getpid(), url)
                meter.start()
                server0, writer0 = thread_cpu(loop_thread), thread_cpu(writer)
                latencies = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = http.get("ValueSet/$validate-code", params=QUERY)
                    latencies.append(time.perf_counter() - t0)
                    r.raise_for_status()
                if recorder is not None:
                    recorder.flush()
                out["server"] = thread_cpu(loop_thread) - server0
                out["writer"] = thread_cpu(writer) - writer0
                meter.stop()
                out["postgres"] = meter.postgres
                out["latencies"] = latencies
        finally:
            server.should_exit = True

    threading.Thread(target=client, daemon=True).start()
    if profile:
        profiler.enable()
    asyncio.run(server.serve())
    if profile:
        profiler.disable()
        out["stats"] = pstats.Stats(profiler)
    fhir.engine.dispose()
    if "latencies" not in out:
        raise RuntimeError("the client did not finish")
    return out


def breakdown(stats: pstats.Stats, cpu_ms: float) -> list[tuple[str, float]]:
    totals = [cumulative(stats, suffix, fn) for _label, suffix, fn in CHAIN]
    scale = cpu_ms / totals[0] if totals[0] else 0.0
    parts: dict[str, float] = {}
    for i, (label, _suffix, _fn) in enumerate(CHAIN):
        inner = totals[i + 1] if i + 1 < len(totals) else 0.0
        parts[label] = parts.get(label, 0.0) + (totals[i] - inner) * scale
    return list(parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a smoke run; RESULTS.md is left alone")
    args = parser.parse_args()
    if args.quick:
        args.requests = 200
    rows: list[list[str]] = []
    with bench_database("validate_code_profile") as url:
        facts = machine_facts(url)
        from fhir_server.config import Settings
        from fhir_server.rest.server import FhirServer
        from fhir_server.storage.access import as_system
        from fhir_server.storage.migrate import upgrade
        from terminology.core import load_core

        loader = FhirServer(Settings(database_url=url, audit_enabled=False))
        upgrade(loader.engine)
        load_core(loader, [GENDER_CS, GENDER_VS], access=as_system("benchmark set-up"))
        loader.engine.dispose()
        results = {}
        for audit in (True, False):
            plain = run(url, audit, args.requests, profile=False)
            n = len(plain["latencies"])
            cpu = plain["server"] / n * 1000
            rows.append(["on" if audit else "off", str(n), ms(percentile(plain["latencies"], 50)),
                         ms(percentile(plain["latencies"], 95)), f"{cpu:.2f}", f"{plain['writer'] / n * 1000:.2f}",
                         f"{plain['postgres'] / n * 1000:.2f}"])
            log(" | ".join(rows[-1]))
            results[audit] = cpu
        profiled = run(url, True, args.requests, profile=True)
        parts = breakdown(profiled["stats"], results[True])
    text = table(["audit", "requests", "p50 ms", "p95 ms", "server thread CPU ms/req", "audit writer CPU ms/req",
                  "PostgreSQL CPU ms/req"], rows)
    parts_table = table(["layer (audit on)", "CPU ms/req"], [[label, f"{value:.3f}"] for label, value in parts])
    print(text + "\n\n" + parts_table)
    if not args.quick:
        write_section("validate-code-profile", "\n\n".join([
            "## ValueSet/$validate-code over HTTP: where the CPU goes (`bench/profile_validate_code.py`)",
            facts_markdown(facts),
            "The real app in one process on PostgreSQL (FHIR core administrative-gender loaded), one keep-alive "
            "client thread, the core called on the event loop thread (the thread-pool hop inlined) so one "
            "thread does the server's share of each request; its CPU per request, the audit writer thread's, "
            "and the PostgreSQL backends'. Layer shares from cProfile (thread-CPU timer) scaled to the "
            "unprofiled server-thread CPU with audit on (the profile also covers startup and the warm-up, "
            "which slightly inflates the event-loop share).",
            text, parts_table]))


if __name__ == "__main__":
    main()

"""Bulk $export throughput and worker memory on PostgreSQL: a real ``fhir-server serve`` in broker mode, one
``fhir-server worker`` on a loopback Redis, N stored resources (Synthea-style, filled with COPY). For each
size: kick-off -> manifest wall time, resources/s, CPU seconds of the worker and of PostgreSQL, and the
worker's peak RSS (sampled, and the kernel's VmHWM). Writes the ``export`` section of RESULTS.md.

    .venv/bin/python bench/export.py                         # 50k, 100k, 200k (about 5 minutes)
    .venv/bin/python bench/export.py --sizes 20000 --quick   # smoke run, no RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO_DIR,
    SOURCE_DIR,
    CpuMeter,
    bench_database,
    facts_markdown,
    fhir_server,
    log,
    machine_facts,
    table,
    write_section,
)
from fill import fill
from read import migrate


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except OSError:
                return

    def __enter__(self) -> RssSampler:
        self.peak = rss_kb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def redis_url() -> str:
    out = subprocess.run(["bash", str(REPO_DIR / "scripts" / "redis.sh")], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def measure(n: int, seed: int, env_extra: dict[str, str]) -> dict[str, Any]:
    with bench_database(f"export{n}") as url:
        migrate(url)
        log(f"filling {n:,} resources")
        filled = fill(url, n, seed=seed)
        env = {"FHIR_BROKER_URL": redis_url(), "FHIR_BROKER_QUEUE": f"fhir-bench-{uuid.uuid4().hex[:8]}",
               "FHIR_BINARY_STORE_URL": "file://" + tempfile.mkdtemp(prefix="fhir-bench-blobs-"), **env_extra}
        with fhir_server(url, 1, extra_env=env) as server:
            worker_env = {**os.environ, **env, "FHIR_DATABASE_URL": url, "FHIR_TERMINOLOGY_PRELOAD": "false"}
            log_path = Path(tempfile.mkdtemp(prefix="fhir-bench-worker-")) / "worker.log"
            with open(log_path, "wb") as wlog:
                worker = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "worker", "--concurrency", "2"],
                                          cwd=SOURCE_DIR, env=worker_env, stdout=wlog, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 120
                while b"ready." not in log_path.read_bytes():
                    if worker.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the worker did not start; see {log_path}")
                    time.sleep(0.1)  # polling a starting process, bounded by the deadline
                idle_rss = rss_kb(worker.pid)
                cpu = CpuMeter(worker.pid, url)
                with httpx.Client(timeout=60) as http, RssSampler(worker.pid) as rss:
                    cpu.start()
                    start = time.perf_counter()
                    kick = http.get(f"{server.base}/$export", headers={"Prefer": "respond-async"})
                    assert kick.status_code == 202, kick.text
                    status_url = kick.headers["Content-Location"]
                    while True:
                        resp = http.get(status_url)
                        if resp.status_code != 202:
                            break
                        time.sleep(0.1)  # polling the status URL, as a client does (bounded below)
                        if time.perf_counter() - start > 1800:
                            raise RuntimeError("export took over 30 minutes")
                    wall = time.perf_counter() - start
                    cpu.stop()
                assert resp.status_code == 200, resp.text
                manifest = resp.json()
                exported = sum(o["count"] for o in manifest["output"])
                assert exported == filled.resources, (exported, filled.resources)
                return {"n": n, "wall": wall, "rate": exported / wall, "worker_cpu": cpu.server,
                        "pg_cpu": cpu.postgres, "files": len(manifest["output"]), "idle_rss": idle_rss / 1024,
                        "peak_rss": rss.peak / 1024, "hwm": rss_kb(worker.pid, "VmHWM") / 1024,
                        "mb": filled.bytes_json / 1e6}
            finally:
                worker.terminate()
                worker.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,100000,200000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke run: do not write RESULTS.md")
    args = parser.parse_args()
    from common import admin_url

    facts = machine_facts(admin_url())
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n, args.seed, {})
        log(f"{n:,}: {r['rate']:,.0f} resources/s, peak RSS {r['peak_rss']:.0f} MB")
        cpu_us = (r["worker_cpu"] + r["pg_cpu"]) / r["n"] * 1e6
        rows.append([f"{r['n']:,}", f"{r['mb']:.0f}", f"{r['wall']:.1f}", f"{r['rate']:,.0f}",
                     f"{r['worker_cpu']:.1f}", f"{r['pg_cpu']:.1f}", f"{cpu_us:.0f}", f"{1e6 / cpu_us:,.0f}",
                     r["files"], f"{r['idle_rss']:.0f}", f"{r['peak_rss']:.0f}", f"{r['hwm']:.0f}"])
    headers = ["resources", "JSON MB", "kick-off to manifest s", "resources/s (wall)", "worker CPU s",
               "PostgreSQL CPU s", "CPU µs per resource (worker + PostgreSQL)", "resources per CPU second",
               "files", "worker RSS idle MB", "peak RSS MB (sampled)", "VmHWM MB"]
    result = table(headers, rows)
    print(result)
    if args.quick:
        return
    best = max(float(r[3].replace(",", "")) for r in rows)
    peak = max(float(r[11]) for r in rows)
    per_cpu = min(float(r[7].replace(",", "")) for r in rows)
    largest = max(int(r[0].replace(",", "")) for r in rows)
    memory_verdict = ("met" if peak < 300 else "**not met**") if largest >= 1_000_000 else "not measured at 1M"
    body = f"""## Bulk $export (`bench/export.py`)

System-level `$export` on PostgreSQL through `fhir-server serve` (broker mode) and one `fhir-server worker`
(celery, 2 threads) on a loopback Redis; Synthea-style resources filled with COPY (no search index needed:
a plain export reads `resource` by keyset pages of 2,000 ids). Time is kick-off to the 200 manifest
(polling every 0.1 s), so it includes queueing and the last poll. Files of at most 100,000 resources go
to the file blob store. Wall time depends on what else the machine runs (load average below); CPU
seconds are the steadier measure.

{result}

Goals: >= 20,000 resources/s (wall: {'met' if best >= 20_000 else '**not met**'}, best {best:,.0f}/s with the
load average below; CPU cost: {per_cpu:,.0f} resources per CPU second of worker and PostgreSQL together,
the rate one quiet core would reach with the two running one after the other);
worker peak RSS < 300 MB for 1M resources ({memory_verdict}: peak {peak:.0f} MB up to {largest:,} resources;
memory is flat in the export size because rows are read in pages and streamed into the blob store).

{facts_markdown(facts)}
"""
    write_section("export", body)


if __name__ == "__main__":
    main()

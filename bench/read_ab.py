"""A/B of the read path: two ``fhir-server serve --workers 1`` on the same PostgreSQL database, one from a
clean worktree of a base commit (A), one from this tree (B); reads, searches and ``metadata`` sent to them in
alternating blocks, so that both see the same load from the rest of the machine. CPU per request of each
server process and of its own PostgreSQL backends (matched by the client ports of its connections).

    .venv/bin/python bench/read_ab.py --base 758aa32 [--rounds 6] [--section read-ab]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LOOPBACK,
    REPO_DIR,
    Server,
    _stop,
    _wait_healthy,
    bench_database,
    facts_markdown,
    free_port,
    libpq,
    log,
    machine_facts,
    percentile,
    run_load,
    table,
    write_section,
)
from peer import Patient, get_job, ingest_job, patient_bundle, read_jobs, search_jobs


@contextmanager
def serve(source: Path, url: str, extra_env: dict[str, str]) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": url, "FHIR_BASE_URL": f"http://{LOOPBACK}:{port}/fhir",
           "FHIR_TERMINOLOGY_PRELOAD": "false", **extra_env}
    log_path = Path(tempfile.mkdtemp(prefix="fhir-ab-")) / "server.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--host", LOOPBACK, "--port",
                                    str(port), "--workers", "1"], cwd=source, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://{LOOPBACK}:{port}/fhir", process, log_path)
    try:
        _wait_healthy(server, port, 180)
        yield server
    finally:
        _stop(process)


@dataclass
class Tally:
    server: float = 0.0
    postgres: float = 0.0
    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def measure(server: Server, url: str, jobs: list[Callable[[httpx.Client], int]], tally: Tally) -> None:
    """Run ``jobs`` on one client against ``server``; add its process's CPU and its own backends' CPU."""
    proc = psutil.Process(server.process.pid)

    def backends() -> dict[int, psutil.Process]:
        ports = {c.laddr.port for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port == 54329}
        with psycopg.connect(libpq(url)) as conn:
            pids = [int(r[0]) for r in conn.execute("SELECT pid, client_port FROM pg_stat_activity "
                                                    "WHERE datname = current_database()") if r[1] in ports]
        return {pid: psutil.Process(pid) for pid in pids}

    before_pg = {pid: _cpu(p) for pid, p in backends().items()}
    before = _cpu(proc)
    result = run_load(server.base, jobs, 1, max_seconds=120)
    tally.server += _cpu(proc) - before
    for pid, p in backends().items():
        tally.postgres += _cpu(p) - before_pg.get(pid, 0.0)
    tally.requests += result.jobs_done
    tally.latencies += result.latencies
    tally.errors += len(result.errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="758aa32", help="commit of A (B is this tree)")
    parser.add_argument("--a-env", default="", help="A's extra settings, NAME=VALUE,... (e.g. an A/B of a setting)")
    parser.add_argument("--b-env", default="")
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=200, help="requests per block")
    parser.add_argument("--section", default="", help="write the table into this section of RESULTS.md")
    args = parser.parse_args(argv)
    rng = random.Random(11)
    envs = [dict(kv.split("=", 1) for kv in e.split(",") if kv) for e in (args.a_env, args.b_env)]
    worktree = Path(tempfile.mkdtemp(prefix="fhir-ab-base-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.base], cwd=REPO_DIR, check=True,
                   capture_output=True)
    kinds = ["read", "search", "metadata"]
    tallies = {(k, s): Tally() for k in kinds for s in "AB"}
    try:
        with bench_database("ab") as url, ExitStack() as stack:
            facts = machine_facts(url)
            a = stack.enter_context(serve(worktree, url, envs[0]))
            b = stack.enter_context(serve(REPO_DIR, url, envs[1]))
            made: list[Patient] = []
            run_load(b.base, [ingest_job(patient_bundle(rng, 20), made) for _ in range(args.patients)], 2,
                     max_seconds=300)
            log(f"stored {len(made)} patients; A={a.base} B={b.base}")
            makers = {"read": lambda n: read_jobs(rng, made, n), "search": lambda n: search_jobs(rng, made, n),
                      "metadata": lambda n: [get_job("metadata")] * n}
            for server in (a, b):  # warm-up
                for k in kinds:
                    run_load(server.base, makers[k](50), 1, max_seconds=60)
            for r in range(args.rounds):
                order = [("A", a), ("B", b)] if r % 2 == 0 else [("B", b), ("A", a)]
                for k in kinds:
                    jobs = makers[k](args.block)
                    for name, server in order:
                        measure(server, url, jobs, tallies[(k, name)])
                log(f"round {r + 1}/{args.rounds} done")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO_DIR, capture_output=True)
    rows: list[list[Any]] = []
    for k in kinds:
        ta, tb = tallies[(k, "A")], tallies[(k, "B")]
        per = [t.server * 1000 / max(1, t.requests) for t in (ta, tb)]
        pg = [t.postgres * 1000 / max(1, t.requests) for t in (ta, tb)]
        rows.append([k, ta.requests, f"{per[0]:.2f}", f"**{per[1]:.2f}**", f"{pg[0]:.2f}", f"{pg[1]:.2f}",
                     f"{percentile(ta.latencies, 50) * 1000:.1f}", f"{percentile(tb.latencies, 50) * 1000:.1f}",
                     f"{percentile(ta.latencies, 95) * 1000:.1f}", f"{percentile(tb.latencies, 95) * 1000:.1f}",
                     ta.errors + tb.errors])
    headers = ["kind", "requests each", "A server CPU ms/req", "B server CPU ms/req", "A PostgreSQL CPU ms/req",
               "B PostgreSQL CPU ms/req", "A p50 ms", "B p50 ms", "A p95 ms", "B p95 ms", "errors"]
    text = table(headers, rows)
    print(text)
    if args.section:
        write_section(args.section, f"""## Read path A/B: {args.section} (`bench/read_ab.py`)

{facts_markdown(facts)}

A: commit {args.base} {args.a_env}; B: this tree {args.b_env}. Both `serve --workers 1` on one PostgreSQL
database ({args.patients} patients x 20 Observations), requests in alternating blocks of {args.block}
({args.rounds} rounds, one client).

{text}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

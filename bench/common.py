"""Shared bench plumbing: a throwaway PostgreSQL database, a real ``fhir-server serve`` subprocess on
loopback, bounded client loops, percentiles, machine facts and the RESULTS.md writer.

Benches only ever talk to 127.0.0.1 and every request loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import os
import platform
import pstats
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx
import psycopg

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# The server code under test: this checkout, or a clean snapshot of one commit (a git worktree) so that
# others' uncommitted work in the tree is not measured. It goes first on sys.path for in-process use.
SOURCE_DIR = Path(os.environ.get("FHIR_BENCH_SOURCE") or REPO_DIR).resolve()
sys.path.insert(0, str(SOURCE_DIR))
RESULTS = BENCH_DIR / "RESULTS.md"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:54329/postgres"
LOOPBACK = "127.0.0.1"


# --- PostgreSQL ------------------------------------------------------------------------------------------


def admin_url() -> str:
    """The test PostgreSQL (scripts/postgres.sh); refuses anything that is not on this machine."""
    url = os.environ.get("FHIR_TEST_POSTGRES_URL") or DEFAULT_ADMIN_URL
    host = urlsplit(url.replace("+psycopg", "")).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"benches only use a loopback PostgreSQL, not {host!r}")
    return url


def libpq(url: str) -> str:
    """SQLAlchemy URL -> libpq conninfo for psycopg."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def with_database(url: str, dbname: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{dbname}"


@contextmanager
def bench_database(label: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh database on the test PostgreSQL, dropped afterwards; yields its SQLAlchemy URL."""
    admin = admin_url()
    dbname = f"fhir_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield with_database(admin, dbname)
    finally:
        if keep:
            print(f"kept database {dbname}", file=sys.stderr)
        else:
            with psycopg.connect(libpq(admin), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def postgres_facts(url: str) -> dict[str, str]:
    with psycopg.connect(libpq(url)) as conn:
        facts = {"version": str(conn.execute("SHOW server_version").fetchone()[0])}  # type: ignore[index]
        for name in ("shared_buffers", "fsync", "synchronous_commit", "max_connections"):
            facts[name] = str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
    return facts


# --- the server under test -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base: str  # FHIR base URL, e.g. http://127.0.0.1:41234/fhir
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def fhir_server(database_url: str, workers: int, *, startup_timeout: float = 180.0,
                extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """``fhir-server serve --workers N`` as a subprocess on a free loopback port; ready once /healthz answers.
    ``extra_env``: more settings for the server (e.g. ``FHIR_MLLP_PORT``)."""
    port = free_port()
    env = {**os.environ, "FHIR_DATABASE_URL": database_url, "FHIR_HOST": LOOPBACK, "FHIR_PORT": str(port),
           "FHIR_BASE_URL": f"http://{LOOPBACK}:{port}/fhir",
           # The one-time background load of the core terminology on a fresh database would run during
           # the measurement and be counted as server CPU: benches measure the steady state.
           "FHIR_TERMINOLOGY_PRELOAD": "false", **(extra_env or {})}
    log_dir = Path(tempfile.mkdtemp(prefix="fhir-bench-"))
    log_path = log_dir / "server.log"
    cmd = [sys.executable, "-m", "fhir_server.cli", "serve", "--host", LOOPBACK, "--port", str(port),
           "--workers", str(workers)]
    with open(log_path, "wb") as log:
        # Its own session, so stopping it also stops the uvicorn worker processes it forks.
        process = subprocess.Popen(cmd, cwd=SOURCE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(f"http://{LOOPBACK}:{port}/fhir", process, log_path)
    try:
        _wait_healthy(server, port, startup_timeout)
        yield server
    finally:
        _stop(process)


def _wait_healthy(server: Server, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"fhir-server exited with {server.process.returncode}; see {server.log_path}")
            try:
                if client.get(f"http://{LOOPBACK}:{port}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling a starting process, bounded by the deadline
    raise RuntimeError(f"fhir-server did not answer /healthz within {timeout:.0f}s; see {server.log_path}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- bounded concurrent client loops ---------------------------------------------------------------------


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, one per completed job
    units: int = 0  # what the jobs report (e.g. resources committed)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    jobs_done: int = 0


Job = Callable[[httpx.Client], int]  # sends one request; returns units done, raises on failure


def run_load(base: str, jobs: Sequence[Job], clients: int, *, max_seconds: float,
             timeout: float = 120.0) -> LoadResult:
    """Run ``jobs`` on ``clients`` threads, one keep-alive httpx client each, until done or the deadline."""
    work: queue.Queue[Job] = queue.Queue()
    for job in jobs:
        work.put(job)
    result = LoadResult()
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=timeout) as client:
            while time.perf_counter() < deadline:
                try:
                    job = work.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                try:
                    units = job(client)
                except Exception as exc:  # a failed request is counted, not fatal to the run
                    with lock:
                        result.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    result.latencies.append(elapsed)
                    result.units += units
                    result.jobs_done += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall = time.perf_counter() - start
    return result


# --- CPU accounting (contention-proof cost per request) ---------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of one process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and all its descendants (uvicorn's worker processes)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    total, frontier = 0.0, {root}
    while frontier:
        total += sum(stats[p][1] for p in frontier if p in stats)
        frontier = {p for p, (ppid, _cpu) in stats.items() if ppid in frontier}
    return total


@dataclass
class CpuMeter:
    """CPU seconds spent by the server, by the PostgreSQL backends serving the bench database, and by this
    client process, between ``start()`` and ``stop()``. Unlike wall time, this barely moves when other work
    shares the machine, so cost per request stays comparable between runs."""

    server_pid: int
    database_url: str
    server: float = 0.0
    postgres: float = 0.0
    client: float = 0.0
    _pg_before: dict[int, float] = field(default_factory=dict)
    _server_before: float = 0.0
    _client_before: float = 0.0

    def _backends(self) -> dict[int, float]:
        with psycopg.connect(libpq(self.database_url)) as conn:
            pids = [int(r[0]) for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        return {pid: stat[1] for pid in pids if (stat := _proc_stat(pid)) is not None}

    def start(self) -> None:
        self._pg_before = self._backends()
        self._server_before = process_tree_cpu(self.server_pid)
        self._client_before = time.process_time()

    def stop(self) -> None:
        self.client = time.process_time() - self._client_before
        self.server = process_tree_cpu(self.server_pid) - self._server_before
        after = self._backends()
        self.postgres = sum(cpu - self._pg_before.get(pid, 0.0) for pid, cpu in after.items())

    @property
    def total(self) -> float:
        return self.server + self.postgres + self.client


# --- statistics and machine facts ------------------------------------------------------------------------


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Cumulative seconds of the functions called ``name`` in files ending with ``suffix`` (cProfile)."""
    raw = stats.stats  # type: ignore[attr-defined]
    return sum(ct for (file, _line, fn), (_cc, _nc, _tt, ct, _callers) in raw.items()
               if fn == name and file.endswith(suffix))


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), p in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=SOURCE_DIR, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = [line for line in git("status", "--porcelain", "--", "fhir_server", "migrations").splitlines() if line]
    where = "" if SOURCE_DIR == REPO_DIR else " (clean worktree)"
    return commit + where + (" + uncommitted changes in fhir_server/ or migrations/" if dirty else "")


def load_average() -> str:
    """1/5/15-minute load: other work on this shared 2-core machine skews the numbers."""
    return " / ".join(open("/proc/loadavg").read().split()[:3])


def machine_facts(database_url: str) -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(re.findall(r"\d+", line)[0])
    pg = postgres_facts(database_url)
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": f"{pg['version']} (shared_buffers={pg['shared_buffers']}, fsync={pg['fsync']}, "
                      f"synchronous_commit={pg['synchronous_commit']})",
        "commit measured": git_commit(),
        "load average (1/5/15 min) at start": load_average(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def facts_markdown(facts: dict[str, str]) -> str:
    """The facts taken at the start, plus the load at the end (call when the measurements are done)."""
    lines = [f"- {name}: {value}" for name, value in facts.items()]
    return "\n".join([*lines, f"- load average (1/5/15 min) at end: {load_average()}"])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text on the terminal)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- RESULTS.md ------------------------------------------------------------------------------------------

HEADER = """# Benchmark results

Written by the scripts in `bench/` (see `bench/README.md`); each bench replaces only its own section.
Numbers are from one run on the machine named in each section; they move with the code (see the commit).
"""


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md, leaving the other benches' sections alone."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def log(message: str, out: TextIO = sys.stderr) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=out, flush=True)

"""seed-demo's groups of patients written by several processes (PostgreSQL; threads would share one GIL).

The parent sets the hospital up and plans the groups (each group's slots and beds, seed.py ``Seeder.plan``);
``workers - 1`` spawned processes, each with its own engine and FhirServer built from the parent's settings,
and the parent itself then take groups from a shared counter. Whatever the timing, the result is the same as
one process writing the groups in order, because:

- a group's choices come from its own ``random.Random`` and it takes only what the plan gave it;
- the steps whose outcome depends on the order of writers take their turn in group order (``SharedTurns``):
  registration (the day's MRN numbers), check-in (the doctor's queue tokens) and dispensing (the stock
  ledger's balances, the first-expiry batch, low-stock Flags). Each waits only for the same step of earlier
  groups, so the other steps of different groups still run side by side;
- groups booking at once lock the doctors they share in one order (seed.py), so they never deadlock.

A failure anywhere (a write the server refused, a process that died) stops every process at its next turn or
group; the parent waits for them all and raises the first failure as a SeedError.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import TYPE_CHECKING, Any, Protocol

from fhir_server.workflows.demo.calls import SeedError

if TYPE_CHECKING:
    from datetime import datetime

    from fhir_server.config import Settings
    from fhir_server.workflows.demo.seed import Group, Seeder

STEPS = ("register", "check-in", "dispense")
POLL = 0.5  # seconds between looks at the stop flag (and, in the parent, at its children) while waiting


class Turns(Protocol):
    """Runs a step of a group once every earlier group has done that step (or will never do it)."""

    def turn(self, step: str, group: int) -> AbstractContextManager[None]: ...


class InOrder:
    """One process writing the groups in order: every turn is already its own."""

    @contextmanager
    def turn(self, step: str, group: int) -> Iterator[None]:
        yield


class Stopped(Exception):
    """Another process failed: this one stops at its next turn or group."""


class SharedTurns:
    """Which groups have done which ordered step, the next group to take, and the stop flag, shared by the
    processes (under one lock; passed to the children when they are spawned)."""

    def __init__(self, ctx: SpawnContext, groups: int) -> None:
        self.groups = groups
        self.cond = ctx.Condition()
        self.done = ctx.Array("b", len(STEPS) * groups, lock=False)
        self.next = ctx.Value("i", 0, lock=False)
        self.stopped = ctx.Value("b", 0, lock=False)
        self.waited = ctx.Value("d", 0.0, lock=False)  # seconds the processes spent waiting for a turn
        self.watch: Callable[[], None] | None = None  # the parent's look at its children while it waits

    def take(self) -> int | None:
        """The next group to write, or None when none is left or the run stops."""
        if self.watch is not None:
            self.watch()
        with self.cond:
            if self.stopped.value:
                raise Stopped
            if self.next.value >= self.groups:
                return None
            self.next.value += 1
            return int(self.next.value - 1)

    @contextmanager
    def turn(self, step: str, group: int) -> Iterator[None]:
        base = STEPS.index(step) * self.groups
        with self.cond:
            since = time.monotonic()
            while not all(self.done[base:base + group]):
                if self.stopped.value:
                    raise Stopped
                self.cond.wait(POLL)
                if self.watch is not None:
                    self.watch()
            self.waited.value += time.monotonic() - since
            if self.stopped.value:
                raise Stopped
        yield
        self._mark(base + group)

    def finish(self, group: int) -> None:
        """The group is written: later groups no longer wait for the steps it did not reach."""
        for step in range(len(STEPS)):
            self._mark(step * self.groups + group)

    def _mark(self, index: int) -> None:
        with self.cond:
            self.done[index] = 1
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped.value = 1
            self.cond.notify_all()


def write_groups(seeder: Seeder, groups: list[Group], turns: SharedTurns) -> dict[int, dict[str, int]]:
    """Take groups until none is left: each one's counts, by group index."""
    seeder.turns = turns
    written: dict[int, dict[str, int]] = {}
    while (index := turns.take()) is not None:
        written[index] = seeder.run_group(groups[index])
        turns.finish(index)
    return written


def worker(n: int, settings: Settings, seed: int, turns: SharedTurns, plans: Any, results: Any) -> None:
    """Child ``n``: its own engine and FhirServer; the plan from the parent once the hospital is set up; then
    groups until none is left. Reports (n, "done", counts), (n, "stopped", None) or (n, "failed", why)."""
    engine = None
    try:
        from fhir_server.rest.server import FhirServer
        from fhir_server.search import ucum
        from fhir_server.storage.database import make_engine
        from fhir_server.workflows.demo.seed import Seeder
        from terminology import ucum as ucum_codes

        turns.watch = _orphaned  # a parent killed outright never says stop: do not wait for it for ever
        engine = make_engine(settings)
        server = FhirServer(settings, engine)
        ucum.factor("kg"), ucum_codes.is_valid("kg")  # the UCUM registries (~2 s) load while the parent sets up
        while True:
            if turns.stopped.value:
                raise Stopped
            _orphaned()
            try:
                hospital, groups = plans.get(timeout=POLL)
                break
            except queue.Empty:
                continue
        results.put((n, "done", write_groups(Seeder(server, seed, hospital), groups, turns)))
    except Stopped:
        results.put((n, "stopped", None))
    except SeedError as exc:
        turns.stop()
        results.put((n, "failed", f"worker {n + 1}: {exc}"))
    except BaseException as exc:  # a bug or a lost database: the run stops all the same, saying why
        turns.stop()
        results.put((n, "failed", f"worker {n + 1}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"))
    finally:
        if engine is not None:
            engine.dispose()


def write_in_parallel(seeder: Seeder, patients: int, workers: int, size: int,
                      not_before: datetime | None) -> list[dict[str, int]]:
    """Set the hospital up (in this process), then write its groups with ``workers`` processes (this one
    included); each group's counts in group order."""
    ctx = multiprocessing.get_context("spawn")
    groups = -(-patients // size)
    turns = SharedTurns(ctx, groups)
    plans, results = ctx.Queue(), ctx.Queue()
    settings = seeder.calls.server.settings
    # Started first: each child imports the code and loads its registries while this process sets up.
    children = [ctx.Process(target=worker, args=(n, settings, seeder.seed, turns, plans, results), daemon=True,
                            name=f"seed-demo worker {n + 1}") for n in range(workers - 1)]
    for child in children:
        child.start()
    reports: dict[int, tuple[str, Any]] = {}
    turns.watch = lambda: _watch(children, results, reports, turns)
    written: dict[int, dict[str, int]] = {}
    failure: BaseException | None = None
    try:
        seeder.setup()
        plan = seeder.plan(patients, size, not_before)
        for _ in children:
            plans.put((seeder.h, plan))
        written = write_groups(seeder, plan, turns)
        if len(written) == groups:  # this process wrote them all: the others, still starting, have nothing to do
            for child in children:
                child.terminate()
            for child in children:
                child.join()
            seeder.h.waited = round(turns.waited.value, 1)
            return [written[g] for g in range(groups)]
    except Stopped:
        pass  # a child's failure: reported below
    except BaseException as exc:
        turns.stop()
        failure = exc
    _collect(children, results, reports, turns)
    if failure is not None:
        raise failure
    why = next((str(body) for kind, body in reports.values() if kind == "failed"), None)
    if why is not None:
        raise SeedError(why)
    for kind, body in reports.values():
        if kind == "done":
            written.update(body)
    seeder.h.waited = round(turns.waited.value, 1)
    if len(written) != groups:  # cannot happen unless a process vanished without a word
        raise SeedError(f"seed-demo: {groups - len(written)} group(s) of patients not written")
    return [written[g] for g in range(groups)]


def _orphaned() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        raise Stopped


def _watch(children: list[SpawnProcess], results: Any, reports: dict[int, tuple[str, Any]],
           turns: SharedTurns) -> None:
    """While the parent waits for a turn: a child that failed or died stops the run."""
    _read(children, results, reports, wait=0)
    if any(kind == "failed" for kind, _ in reports.values()):
        turns.stop()


def _read(children: list[SpawnProcess], results: Any, reports: dict[int, tuple[str, Any]], *,
          wait: float) -> None:
    """The reports sent so far (waiting up to ``wait`` for the first); a child that ended without one (killed,
    crashed) counts as failed. Dead ones are noted before the queue is read: what they sent is in it by then."""
    dead = [n for n, child in enumerate(children) if not child.is_alive()]
    try:
        while True:
            n, kind, body = results.get(timeout=wait) if wait else results.get_nowait()
            reports[n] = (kind, body)
            wait = 0
    except queue.Empty:
        pass
    for n in dead:
        reports.setdefault(n, ("failed", f"seed-demo worker {n + 1} ended (exit code {children[n].exitcode}) "
                                         "without a report"))


def _collect(children: list[SpawnProcess], results: Any, reports: dict[int, tuple[str, Any]],
             turns: SharedTurns) -> None:
    """Every child's report, then the children joined (a child's queue must be read for it to exit)."""
    while len(reports) < len(children):
        _read(children, results, reports, wait=POLL)
        if any(kind == "failed" for kind, _ in reports.values()):
            turns.stop()
    for child in children:
        child.join()

"""Planner statistics after bulk writes (issue 19 goal 4): PostgreSQL plans a search from its statistics of
the resource and index tables, and a table loaded a moment ago has none (autovacuum's ANALYZE comes a
minute or more later, and only past 10% new rows). Until then the first searches after a load walk the
wrong index: measured 16.8 / 24.3 ms p50 / p95 against 4-8 ms once analysed (bench/fresh_plans.py).

So the server analyses the tables it wrote in bulk itself:
- at the end of `fhir-server load` and of a `$import` job (``analyze``, before they report done);
- after any run of writes: every committed resource counts, and past ``FHIR_ANALYZE_AFTER_ROWS`` since the
  last ANALYZE one background thread analyses (``Analyzer``; one at a time, never in a request's path).
Migration 0028 also lowers autovacuum's analyze thresholds on the index tables, for the steady state.
SQLite's planner needs no statistics for these queries: nothing is done there.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.search.composite_table import SearchComposite
from fhir_server.search.tables import TABLES
from fhir_server.storage.models import ResourceRow

log = logging.getLogger(__name__)

# Every table a search reads: the resources and each kind of index row.
SEARCHED_TABLES = (ResourceRow.__tablename__, SearchComposite.__tablename__,
                   *sorted(str(t.name) for t in TABLES.values()))


def analyze(engine: Engine) -> float:
    """ANALYZE the searched tables of ``engine``'s tenant; returns the seconds it took (0 on SQLite)."""
    if engine.dialect.name != "postgresql":
        return 0.0
    started = time.perf_counter()
    with engine.begin() as conn:  # in a transaction: a tenant's schema is set per transaction (tenancy)
        conn.exec_driver_sql(f"ANALYZE {', '.join(SEARCHED_TABLES)}")
    return time.perf_counter() - started


class Analyzer:
    """Counts committed writes; past ``rows`` since the last ANALYZE, analyses in a background thread."""

    def __init__(self, engine: Engine, rows: int) -> None:
        self.engine = engine
        self.rows = rows
        self._written = 0
        self._lock = threading.Lock()
        self._running = False

    def install(self, hooks: Hooks) -> None:
        if self.rows > 0 and self.engine.dialect.name == "postgresql":
            hooks.register(HookPoint.AFTER_COMMIT, self._written_one)

    def _written_one(self, _event: WriteEvent, _repo: object) -> None:
        with self._lock:
            self._written += 1
            if self._written < self.rows or self._running:
                return
            self._written, self._running = 0, True
        threading.Thread(target=self._analyze, name="analyze-after-writes", daemon=True).start()

    def _analyze(self) -> None:
        try:
            took = analyze(self.engine)
            log.info("statistics: searched tables analysed after %d writes (%.2f s)", self.rows, took)
        except Exception:  # statistics are an optimisation: autovacuum will do it later
            log.warning("statistics: ANALYZE after writes failed", exc_info=True)
        finally:
            with self._lock:
                self._running = False

"""Unit of work: one database transaction around one interaction (or one whole transaction Bundle).

Only the unit of work commits, and it commits before the response is sent. Conflicts between concurrent
writers that the database detects (unique violations on a version, serialisation failures, deadlocks,
SQLite busy) make it run the interaction again from the start, a bounded number of times.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from fhir_server.errors import CONFLICT, FhirError
from fhir_server.hooks import Hooks
from fhir_server.storage.repository import AccessPolicy, Finder, Repository
from fhir_server.validation import ResourceValidator

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
# SQLSTATEs worth a retry: serialization_failure, deadlock_detected, unique_violation, lock_not_available.
RETRY_SQLSTATES = {"40001", "40P01", "23505", "55P03"}


def _retryable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:  # a pooled connection the server dropped: the pool has discarded it
        return True
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in RETRY_SQLSTATES
    text = str(orig).lower()
    if isinstance(exc, OperationalError):
        return "locked" in text or "busy" in text
    return isinstance(exc, IntegrityError) and "unique" in text


class UnitOfWork:
    def __init__(self, engine: Engine, hooks: Hooks, validator: ResourceValidator, finder: Finder) -> None:
        self.engine = engine
        self.hooks = hooks
        self.validator = validator
        self.finder = finder

    def run(self, work: Callable[[Repository], T], *, write: bool, access: AccessPolicy) -> T:
        """``access``: the caller's (``FhirRequest.access``, a job's owner's), or ``as_system("why")`` where the
        server acts for itself. Required: no unit of work runs without someone's access."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self.engine.connect() as conn:
                    if write:
                        conn.execution_options(fhir_write=True)
                    elif conn.dialect.name == "postgresql":
                        # READ COMMITTED snapshots per statement anyway, so a read-only unit of work loses
                        # nothing without BEGIN/COMMIT and saves two round trips per request. (A tenant's
                        # engine still opens a transaction for its schema, in the first round trip:
                        # tenancy/engines.py.)
                        conn.execution_options(isolation_level="AUTOCOMMIT")
                    with conn.begin():
                        repo = Repository(conn, self.hooks, self.validator, self.finder, access=access)
                        result = work(repo)
                        repo.finish()
            except DBAPIError as exc:
                if not _retryable(exc):
                    raise
                if attempt == MAX_ATTEMPTS:
                    raise FhirError(409, CONFLICT, "The change conflicted with concurrent changes; "
                                                   "retry the request") from exc
                log.debug("retrying after conflict (attempt %d): %s", attempt, exc.orig)
                time.sleep(random.uniform(0, 0.005 * 2 ** attempt))  # jittered backoff, not a test wait
                continue
            self.hooks.run_after_commit(repo.events)
            return result
        raise AssertionError("unreachable")

"""Bulk data jobs in the database: kick-off inserts, claims with a lease, checkpoints, cancel.

A job is claimed by one runner at a time (a token and ``lease_until``); every checkpoint renews the lease
and writes the per-type cursors, so a runner that dies (a killed worker) leaves a job that another runner
claims once the lease lapses and resumes where the last checkpoint left it. A checkpoint that finds the
job cancelled, or claimed by someone else, tells its runner to stop.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from fhir_server.auth.access import AccessContext
from fhir_server.auth.stored import StoredAccess, dump_access, load_access
from fhir_server.jobs.tables import BULK_JOB
from fhir_server.storage.repository import AccessPolicy, Repository

J = BULK_JOB
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    request: str
    params: dict[str, Any]
    access: StoredAccess  # the owner's, restored: the job runs under it
    owner: str | None
    transaction_time: datetime
    progress: dict[str, Any]
    error: str | None
    expires_at: datetime | None
    lease_token: str | None = None


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)  # FHIR instants are kept to the millisecond


def _job(row: Any) -> Job:
    return Job(row.id, row.kind, row.status, row.request, row.params, load_access(row.access), row.owner,
               row.transaction_time, row.progress, row.error, row.expires_at, row.lease_token)


def insert_job(repo: Repository, kind: str, request: str, params: dict[str, Any],
               access: AccessPolicy) -> Job:
    """In the kick-off's own unit of work: the job exists if and only if the kick-off commits. ``access``: the
    caller's, kept whole (scopes, role, patient, fhirUser, subject): the job runs under it, and only its
    holder may poll, download or cancel."""
    now = _now()
    job_id = uuid.uuid4().hex
    owner = access.subject if isinstance(access, AccessContext) else None
    row: dict[str, Any] = {"id": job_id, "kind": kind, "status": "queued", "request": request, "params": params,
           "access": dump_access(access), "owner": owner, "transaction_time": now, "created_at": now,
           "updated_at": now, "progress": {}}
    repo.execute(insert(J).values(**row))
    return Job(job_id, kind, "queued", request, params, load_access(row["access"]), owner, now, {}, None, None)


def read_job(conn: Connection | Repository, job_id: str) -> Job | None:
    row = conn.execute(select(J).where(J.c.id == job_id)).first()
    return None if row is None else _job(row)


def cancel_job(repo: Repository, job_id: str) -> bool:
    """DELETE on the status URL: a queued or running job becomes cancelled (its runner stops at the next
    checkpoint); a finished one is forgotten. False when there was nothing to cancel."""
    result = repo.execute(update(J).where(J.c.id == job_id, J.c.status != "cancelled")
                          .values(status="cancelled", lease_token=None, updated_at=_now()))
    return bool(result.rowcount)


class JobStore:
    """What runners do with jobs, each step its own short transaction."""

    def __init__(self, engine: Engine, lease_seconds: float = 60.0) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.stopping = threading.Event()  # set when the process shuts down: runs stop at their next checkpoint

    def _write(self, stmt: Any) -> int:
        with self.engine.connect() as conn:
            conn.execution_options(fhir_write=True)
            with conn.begin():
                return int(conn.execute(stmt).rowcount)

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            return read_job(conn, job_id)

    def due(self, limit: int = 20, *, stale: bool = True) -> list[str]:
        """Jobs waiting for a runner: queued, or (``stale``) running under a lease that has lapsed."""
        now = _now()
        waiting = J.c.status == "queued"
        with self.engine.connect() as conn:
            rows = conn.execute(select(J.c.id).where(
                or_(waiting, and_(J.c.status == "running", J.c.lease_until < now)) if stale else waiting)
                .order_by(J.c.created_at).limit(limit))
            return [r.id for r in rows]

    def claim(self, job_id: str) -> Job | None:
        now = _now()
        token = uuid.uuid4().hex
        claimed = self._write(update(J).where(J.c.id == job_id, or_(
            J.c.status == "queued", and_(J.c.status == "running", J.c.lease_until < now)))
            .values(status="running", lease_token=token, lease_until=now + self.lease, updated_at=now))
        if not claimed:
            return None
        job = self.get(job_id)
        return job if job is not None and job.lease_token == token else None

    def _held(self, job: Job) -> Any:
        return and_(J.c.id == job.id, J.c.lease_token == job.lease_token, J.c.status == "running")

    def checkpoint(self, job: Job, progress: dict[str, Any] | None = None) -> bool:
        """Renew the lease (and save progress); False when the job was cancelled or taken over: stop."""
        now = _now()
        if self.stopping.is_set():  # shutting down: hand the job back now, so the next runner needs no wait
            self._write(update(J).where(self._held(job)).values(lease_until=now, updated_at=now))
            return False
        values: dict[str, Any] = {"lease_until": now + self.lease, "updated_at": now}
        if progress is not None:
            values["progress"] = progress
        return self._write(update(J).where(self._held(job)).values(**values)) == 1

    def finish(self, job: Job, progress: dict[str, Any], expiry_seconds: float) -> bool:
        now = _now()
        return self._write(update(J).where(self._held(job)).values(
            status="completed", progress=progress, lease_token=None, lease_until=None, updated_at=now,
            expires_at=now + timedelta(seconds=expiry_seconds))) == 1

    def fail(self, job: Job, message: str) -> None:
        self._write(update(J).where(self._held(job)).values(
            status="failed", error=message[:2000], lease_token=None, lease_until=None, updated_at=_now()))

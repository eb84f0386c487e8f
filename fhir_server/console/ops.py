"""Console pages of the outbox (due, delivering, dead letters with their last error; retry, discard) and of
bulk jobs (state, progress, cancel), over fhir_server/jobs (outbox_admin.py, store.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import Engine, func, select
from starlette.concurrency import run_in_threadpool

from fhir_server.console.web import audit, back, guard, guard_post, message, page, path_of, server_of
from fhir_server.jobs import outbox_admin
from fhir_server.jobs.bulk_ops import _progress_text
from fhir_server.jobs.store import ACTIVE, _job, cancel_job, read_job
from fhir_server.jobs.tables import BULK_JOB
from fhir_server.storage.models import OUTBOX

router = APIRouter(include_in_schema=False)
JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


def _due(engine: Engine) -> tuple[int, float | None]:
    """Pending rows due now, and the age in seconds of the oldest of them."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        n, oldest = conn.execute(select(func.count(), func.min(OUTBOX.c.next_attempt_at)).where(
            OUTBOX.c.status == "pending", OUTBOX.c.next_attempt_at <= now)).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(n), (now - oldest).total_seconds() if oldest is not None else None


@router.get("/console/outbox")
async def outbox(request: Request) -> Response:
    session = await guard(request)
    if isinstance(session, Response):
        return session
    status = request.query_params.get("status") or None
    if status is not None and status not in outbox_admin.STATUSES:
        return message(request, session, 400, "Outbox", f"status must be one of {', '.join(outbox_admin.STATUSES)}")
    engine = server_of(request).engine
    listing, (due, age) = await run_in_threadpool(lambda: (outbox_admin.list_rows(engine, status, 200), _due(engine)))
    return page(request, session, "outbox.html", title="Outbox", statuses=outbox_admin.STATUSES, status=status,
                due=due, age=age, **listing)


async def _outbox_action(request: Request, what: str, row_id: int | None, dead: bool) -> Response:
    checked = await guard_post(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    engine = server_of(request).engine
    act = outbox_admin.retry if what == "retry" else outbox_admin.discard
    count = await run_in_threadpool(lambda: act(engine, row_id, dead=dead))
    target = [f"outbox/{row_id}"] if row_id is not None else ["outbox/dead"]
    audit(request, session, f"outbox-{what}", f"Outbox {what}", 200 if count else 404, targets=target)
    done = "made due again" if what == "retry" else "discarded (kept, marked done)"
    said = f"{count} row{'s' if count != 1 else ''} {done}." if count else "Nothing to do: no such row."
    return back(request, session, form.get("return_to") or path_of(request, "/console/outbox"), said)


@router.post("/console/outbox/{row_id}/retry")
async def retry(request: Request, row_id: int) -> Response:
    return await _outbox_action(request, "retry", row_id, False)


@router.post("/console/outbox/retry-dead")
async def retry_dead(request: Request) -> Response:
    return await _outbox_action(request, "retry", None, True)


@router.post("/console/outbox/{row_id}/discard")
async def discard(request: Request, row_id: int) -> Response:
    return await _outbox_action(request, "discard", row_id, False)


def _jobs(engine: Engine, status: str | None) -> tuple[dict[str, int], list[dict[str, Any]]]:
    with engine.connect() as conn:
        counts = {s: int(n) for s, n in conn.execute(select(BULK_JOB.c.status, func.count())
                                                     .group_by(BULK_JOB.c.status))}
        stmt = select(BULK_JOB).order_by(BULK_JOB.c.created_at.desc()).limit(200)
        if status:
            stmt = stmt.where(BULK_JOB.c.status == status)
        rows = conn.execute(stmt).all()
    jobs = []
    for row in rows:
        job = _job(row)
        jobs.append({"id": job.id, "kind": job.kind, "status": job.status, "owner": job.owner or "",
                     "created": row.created_at, "updated": row.updated_at, "progress": _progress_text(job),
                     "error": job.error or "", "active": job.status in ACTIVE})
    return dict.fromkeys(JOB_STATUSES, 0) | counts, jobs


@router.get("/console/jobs")
async def jobs(request: Request) -> Response:
    session = await guard(request)
    if isinstance(session, Response):
        return session
    status = request.query_params.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        return message(request, session, 400, "Bulk jobs", f"status must be one of {', '.join(JOB_STATUSES)}")
    counts, rows = await run_in_threadpool(_jobs, server_of(request).engine, status)
    return page(request, session, "jobs.html", title="Bulk jobs", counts=counts, rows=rows, status=status,
                statuses=JOB_STATUSES)


@router.post("/console/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str) -> Response:
    checked = await guard_post(request)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    server = server_of(request)

    def run() -> bool:
        def work(repo: Any) -> bool:
            job = read_job(repo, job_id)
            return job is not None and job.status in ACTIVE and cancel_job(repo, job_id)
        return bool(server.uow.run(work, write=True, access=session.access))  # the operator's own access

    cancelled = await run_in_threadpool(run)
    audit(request, session, "job-cancel", "Bulk job cancelled", 200 if cancelled else 404,
          targets=[f"bulk-job/{job_id}"])
    said = f"Job {job_id} cancelled: its runner stops at its next checkpoint." if cancelled else \
        f"Job {job_id} is not queued or running: nothing to cancel."
    return back(request, session, path_of(request, "/console/jobs"), said)

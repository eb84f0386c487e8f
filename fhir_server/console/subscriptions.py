"""Console pages of Subscriptions: each one's status and last error (read through the FHIR core with the
operator's own access: an interface analyst's role reads Subscriptions and nothing else), its event count,
its recent events and the outbox rows of its notifications (retried from the outbox page's actions)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from fhir_server.console.session import place
from fhir_server.console.web import guard, message, page, server_of
from fhir_server.rest.request import FhirRequest
from fhir_server.storage.models import OUTBOX
from fhir_server.subscriptions import store
from fhir_server.subscriptions.delivery import dead_letters
from fhir_server.subscriptions.engine import NOTIFY_TOPIC

router = APIRouter(include_in_schema=False)
RECENT = 20


def _summary(sub: dict[str, Any]) -> dict[str, Any]:
    channel = sub.get("channel") or {}
    return {"id": sub.get("id"), "status": sub.get("status", ""), "criteria": sub.get("criteria", ""),
            "reason": sub.get("reason", ""), "channel": channel.get("type", ""),
            "endpoint": channel.get("endpoint", ""), "error": sub.get("error", ""), "end": sub.get("end", "")}


@router.get("/console/subscriptions")
async def subscriptions(request: Request) -> Response:
    session = await guard(request)
    if isinstance(session, Response):
        return session
    server = server_of(request)
    status = request.query_params.get("status", "")
    query = [("_count", "200"), ("_sort", "-_lastUpdated")] + ([("status", status)] if status else [])
    req = FhirRequest("GET", "Subscription", query, base_url=place(request).fhir_base, access=session.access,
                      client_address=session.address)  # audited by the core as any search

    def run() -> tuple[int, list[dict[str, Any]], dict[str, tuple[int, int]]]:
        resp = server.handle(req)
        if resp.status != 200 or not isinstance(resp.resource, dict):
            return resp.status, [], {}
        subs = [_summary(e["resource"]) for e in resp.resource.get("entry", [])
                if e.get("resource", {}).get("resourceType") == "Subscription"]
        with server.engine.connect() as conn:
            numbers = {s["id"]: (store.events_since_start(conn, s["id"]), dead_letters(conn, s["id"])) for s in subs}
        return 200, subs, numbers

    code, subs, numbers = await run_in_threadpool(run)
    if code != 200:
        return message(request, session, code, "Subscriptions", "The Subscriptions could not be read with your access.")
    return page(request, session, "subscriptions.html", title="Subscriptions", subs=subs, numbers=numbers,
                status=status)


@router.get("/console/subscriptions/{sid}")
async def subscription(request: Request, sid: str) -> Response:
    session = await guard(request)
    if isinstance(session, Response):
        return session
    server = server_of(request)
    req = FhirRequest("GET", f"Subscription/{sid}", base_url=place(request).fhir_base, access=session.access,
                      client_address=session.address)

    def run() -> tuple[int, dict[str, Any], list[Any], list[Any], int]:
        resp = server.handle(req)  # the operator's access decides, as for any read
        if resp.status != 200 or not isinstance(resp.resource, dict):
            return resp.status, {}, [], [], 0
        with server.engine.connect() as conn:
            total = store.events_since_start(conn, sid)
            events = store.events(conn, sid, since=max(1, total - RECENT + 1))
            rows = conn.execute(select(OUTBOX.c.pk, OUTBOX.c.key, OUTBOX.c.status, OUTBOX.c.attempts,
                                       OUTBOX.c.max_attempts, OUTBOX.c.next_attempt_at, OUTBOX.c.last_error)
                                .where(OUTBOX.c.topic == NOTIFY_TOPIC,
                                       OUTBOX.c.key.like(f"Subscription/{sid}/event/%"))
                                .order_by(OUTBOX.c.pk.desc()).limit(RECENT)).all()
        return 200, _summary(resp.resource), list(reversed(events)), list(rows), total

    code, sub, events, rows, total = await run_in_threadpool(run)
    if code != 200:
        text = "No such Subscription." if code in (404, 410) else "Your access does not reach this Subscription."
        return message(request, session, 404 if code in (404, 410) else 403, "Subscription", text)
    return page(request, session, "subscription.html", title=f"Subscription {sid}", sub=sub, events=events,
                rows=rows, total=total)

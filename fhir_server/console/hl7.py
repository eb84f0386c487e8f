"""Console pages of the HL7 v2 interfaces: counts, search, one message (masked) with its ACKs and the
resources it produced, and replay of one message or of a filtered set (interfaces/mllp/pipeline.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fhir_server.console import messages
from fhir_server.console.v2mask import mask_message
from fhir_server.console.web import audit, back, guard, guard_post, message, page, path_of, server_of
from interfaces.mllp.admin import mask
from interfaces.mllp.pipeline import Hl7Pipeline
from interfaces.mllp.store import ERROR, RECEIVED, REJECTED, STATUSES, MessageStore, StoredMessage

router = APIRouter(include_in_schema=False)
REPLAYABLE = (ERROR, REJECTED, RECEIVED)  # a processed message is not applied twice
REPLAY_CAP = 500  # messages one replay of a set re-runs (run it again for more)


def _patients(rows: list[StoredMessage]) -> list[str]:
    return sorted({r for m in rows for r in (m.resources or []) if r.startswith("Patient/")})


@router.get("/console/hl7")
async def hl7_messages(request: Request) -> Response:
    session = await guard(request)
    if isinstance(session, Response):
        return session
    params = dict(request.query_params)
    try:
        filters = messages.Filters.of(params)
        before = int(params["before"]) if params.get("before") else None
    except ValueError as exc:
        return message(request, session, 400, "HL7 v2 messages", str(exc))
    engine = server_of(request).engine
    counts, (rows, older) = await run_in_threadpool(
        lambda: (messages.counts(engine), messages.search(engine, filters, 50, before)))
    audit(request, session, "hl7-search", "HL7 v2 messages listed (masked)", 200, targets=_patients(rows),
          query=urlencode(filters.query()), action="R")
    next_page = urlencode({**filters.query(), "before": older}) if older else None
    return page(request, session, "hl7_list.html", title="HL7 v2 messages", counts=counts, rows=rows,
                filters=filters, statuses=STATUSES, next_page=next_page, replayable=REPLAYABLE, cap=REPLAY_CAP,
                masked_error=mask)


@router.get("/console/hl7/messages/{pk}")
async def hl7_message(request: Request, pk: int) -> Response:
    session = await guard(request)
    if isinstance(session, Response):
        return session
    row = await run_in_threadpool(MessageStore(server_of(request).engine).get, pk)
    if row is None:
        return message(request, session, 404, "HL7 v2 message", f"No message {pk}.")
    audit(request, session, "hl7-message", "HL7 v2 message shown (masked)", 200, targets=_patients([row]),
          action="R")
    return page(request, session, "hl7_message.html", title=f"HL7 v2 message {pk}", row=row,
                raw=mask_message(row.raw), acks=[mask_message(a) for a in row.acks], error=mask(row.error),
                replayable=row.status in REPLAYABLE)


@router.post("/console/hl7/messages/{pk}/replay")
async def replay_one(request: Request, pk: int) -> Response:
    checked = await guard_post(request)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    server = server_of(request)
    store = MessageStore(server.engine)
    row = await run_in_threadpool(store.get, pk)
    if row is None:
        return message(request, session, 404, "Replay", f"No message {pk}.")
    if row.status not in REPLAYABLE:
        audit(request, session, "hl7-replay", "HL7 v2 message replayed", 409, targets=_patients([row]))
        return message(request, session, 409, "Replay", f"Message {pk} was processed already: it is not "
                                                         "applied twice.")
    status = await run_in_threadpool(Hl7Pipeline(server, store).reprocess, row)
    done = await run_in_threadpool(store.get, pk)
    audit(request, session, "hl7-replay", "HL7 v2 message replayed", 200,
          targets=[f"hl7-message/{pk}", *_patients([done] if done else [])])
    return back(request, session, path_of(request, f"/console/hl7/messages/{pk}"),
                f"Message {pk} replayed: now {status}.")


@router.post("/console/hl7/replay")
async def replay_set(request: Request) -> Response:
    checked = await guard_post(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    try:
        filters = messages.Filters.of(form)
    except ValueError as exc:
        return message(request, session, 400, "Replay", str(exc))
    if filters.status not in REPLAYABLE:
        return message(request, session, 400, "Replay", "Choose the status to replay: error, rejected or received "
                                                        "(processed messages are not applied twice).")
    server = server_of(request)
    store = MessageStore(server.engine)

    def run() -> dict[str, Any]:
        pipeline = Hl7Pipeline(server, store)
        outcome: dict[str, int] = {}
        for row in messages.every_match(server.engine, filters, REPLAY_CAP):
            new = pipeline.reprocess(row)
            outcome[new] = outcome.get(new, 0) + 1
        return outcome

    outcome = await run_in_threadpool(run)
    total = sum(outcome.values())
    audit(request, session, "hl7-replay-set", "HL7 v2 messages replayed", 200, query=urlencode(filters.query()))
    said = ", ".join(f"{n} {s}" for s, n in sorted(outcome.items())) or "nothing matched"
    return back(request, session, path_of(request, "/console/hl7") + f"?{urlencode(filters.query())}",
                f"Replayed {total} message{'s' if total != 1 else ''}: {said}.")


"""The console's doors and its overview: sign-in, the callback, sign-out, and the server's health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from fhir_server.api.health import readiness
from fhir_server.auth.roles import CONSOLE_ROLES
from fhir_server.console import session as sessions
from fhir_server.console.web import audit, guard, guard_post, message, page, server_of
from fhir_server.jobs import outbox_admin
from fhir_server.jobs.tables import BULK_JOB
from interfaces.mllp.store import MessageStore

router = APIRouter(include_in_schema=False)


@router.get("/console/sign-in")
async def sign_in(request: Request) -> Response:
    return await sessions.start(request)


@router.get("/console/callback")
async def callback(request: Request) -> Response:
    here = sessions.place(request)
    done = await sessions.finish(request)
    if done.tokens is None:
        response = message(request, None, 400, "Sign-in failed", done.error or "")
        sessions.clear_cookies(response, here)
        return response
    claims = await sessions.claims_of(request, done.tokens["access_token"])
    role = (claims or {}).get("role")
    if role not in CONSOLE_ROLES:  # signed in, but not someone the console is for: the sign-in ends here
        if done.tokens.get("refresh_token"):
            await sessions.end(request, done.tokens["refresh_token"])
        response = message(request, None, 403, "Not for your role",
                           f"The console is for admins and interface analysts; your role is {role or 'none'}.")
        sessions.clear_cookies(response, here)
        return response
    response = RedirectResponse(done.next, status_code=303)
    sessions.set_cookie(response, here, sessions.SESSION, done.tokens["access_token"])
    sessions.set_cookie(response, here, sessions.REFRESH, done.tokens.get("refresh_token", ""))
    sessions.set_cookie(response, here, sessions.CSRF, sessions.csrf_token())
    response.delete_cookie(sessions.SIGN_IN, path=here.path, secure=here.secure, httponly=True, samesite="strict")
    return response


@router.post("/console/sign-out")
async def sign_out(request: Request) -> Response:
    checked = await guard_post(request)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    refresh = request.cookies.get(sessions.REFRESH)
    if refresh:
        await sessions.end(request, refresh)
    audit(request, session, "sign-out", "Console sign-out", 200)
    here = sessions.place(request)
    response = page(request, None, "sign_in.html", 200, title="Signed out", next="")
    sessions.clear_cookies(response, here)
    return response


@router.get("/console")
async def overview(request: Request) -> Response:
    session = await guard(request)
    if isinstance(session, Response):
        return session
    server = server_of(request)

    def gather() -> dict[str, Any]:
        with server.engine.connect() as conn:
            jobs = {s: int(n) for s, n in conn.execute(select(BULK_JOB.c.status, func.count())
                                                        .group_by(BULK_JOB.c.status))}
        return {"checks": readiness(server.engine, server.settings),
                "hl7": {"received": 0, "processed": 0, "error": 0, "rejected": 0}
                | MessageStore(server.engine).counts(),
                "outbox": outbox_admin.list_rows(server.engine, None, 1)["counts"], "jobs": jobs}

    facts = await run_in_threadpool(gather)
    ready = all(c["status"] == "pass" for c in facts["checks"].values())
    return page(request, session, "overview.html", title="Overview", ready=ready, **facts)

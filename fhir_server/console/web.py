"""What every console page shares: the templates, the guard (a session, the role, the CSRF token of a POST),
flash messages, and the audit record of each action."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from fhir_server.api.tenants import stack_of
from fhir_server.audit.codes import own
from fhir_server.audit.events import Record
from fhir_server.audit.service import actor_of
from fhir_server.console.session import FLASH, Session, apply, csrf_ok, current, place, set_cookie
from fhir_server.rest.server import FhirServer

TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
# No script, no external asset, no framing; forms post only here.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def server_of(request: Request) -> FhirServer:
    server: FhirServer = stack_of(request).fhir
    return server


def path_of(request: Request, suffix: str = "") -> str:
    """The browser's path of this console page (or of ``/console`` + suffix): the tenant's prefix included,
    which the tenant routing took off ``request.url.path``."""
    return place(request).path + (suffix.removeprefix("/console") if suffix else
                                  request.url.path.removeprefix("/console"))


def page(request: Request, session: Session | None, template: str, code: int = 200, **context: Any) -> Response:
    here = place(request)
    flash = unquote(request.cookies.get(FLASH, "")) or None
    html = TEMPLATES.get_template(template).render(
        console=here.path, session=session, flash=flash, request_path=path_of(request), tenant=stack_of(request).code,
        **context)
    response = HTMLResponse(html, status_code=code, headers=HEADERS)
    if flash:
        response.delete_cookie(FLASH, path=here.path, secure=here.secure, httponly=True, samesite="strict")
    return apply(response, request, session)


def message(request: Request, session: Session | None, status: int, title: str, text: str) -> Response:
    return page(request, session, "message.html", status, title=title, text=text)


def back(request: Request, session: Session, to: str, flash: str) -> Response:
    """Post/redirect/get: to a console page, with one line telling what was done."""
    here = place(request)
    response = RedirectResponse(to if to.startswith(here.path) else here.path, status_code=303)
    set_cookie(response, here, FLASH, quote(flash[:300]), max_age=60)
    return apply(response, request, session)


async def guard(request: Request, *, admin: bool = False) -> Session | Response:
    """The session, or the answer for who has none: 401 with the sign-in button; 403 for a role the console
    (or, ``admin``, this page) is not for."""
    session, refused_role = await current(request)
    if session is None:
        if refused_role is not None:
            return message(request, None, 403, "Not for your role",
                           f"The console is for admins and interface analysts; your role is {refused_role}.")
        target = path_of(request) + (f"?{request.url.query}" if request.url.query else "")
        return page(request, None, "sign_in.html", 401, next=target if request.method == "GET" else "")
    if admin and not session.admin:
        return message(request, session, 403, "Admins only", "Only an admin may use this page.")
    return session


async def guard_post(request: Request, *, admin: bool = False) -> tuple[Session, dict[str, str]] | Response:
    """A POST: a session, the role, and the form's CSRF token equal to the session's (else 403)."""
    session = await guard(request, admin=admin)
    if isinstance(session, Response):
        return session
    body = (await request.body()).decode("utf-8", "replace")
    form = dict(parse_qsl(body, keep_blank_values=True))
    if not csrf_ok(session, form):
        return message(request, session, 403, "Form expired",
                       "The form was not sent from this console page (its CSRF token is missing or old). "
                       "Reload the page and try again.")
    return session, form


def audit(request: Request, session: Session, code: str, display: str, status: int, *,
          targets: list[str] | None = None, query: str | None = None, action: str = "E") -> None:
    """Each console action in the audit trail (who, from where, what on what), as the /admin routes do."""
    server = server_of(request)
    if server.audit is None:
        return
    server.audit.recorder.record(Record(own(f"console-{code}", display), action, status,
                                        actor_of(session.access, session.address), targets=list(targets or []),
                                        query=query))

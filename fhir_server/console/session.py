"""Signing in to the console: the server's own SMART sign-in (authorization code + PKCE, S256) as the
registered internal client ``fhir-console``, and the session cookie that follows.

The console is a public client whose one redirect URI is the path ``/console/callback``: the console page of
this server at the address the browser reached the sign-in page by (fhir_server/auth/clients.py). The code is
exchanged server-side with the PKCE verifier the console kept in an HttpOnly cookie; the access token and
the refresh token then live in HttpOnly, SameSite=Strict cookies (Secure over https) scoped to the tenant's
console path, and every request checks the access token as the FHIR endpoint does (signature, expiry,
revocation, the user still active). An expired access token is refreshed with the refresh token. Only the
roles in ``CONSOLE_ROLES`` get a session; every POST form carries the session's CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from fhir_server.api.auth import SmartAuth, _call, _token
from fhir_server.api.tenants import stack_of, tenant_urls
from fhir_server.auth.access import AccessContext
from fhir_server.auth.authorization import SmartRequest
from fhir_server.auth.clients import Urls
from fhir_server.auth.roles import CONSOLE_ROLES
from fhir_server.auth.store import User
from fhir_server.rest.server import FhirServer

CLIENT_ID = "fhir-console"
CLIENT_NAME = "the FHIR console"
# Read and search for the admins' resource browser; the role table caps it (an interface analyst: Subscriptions).
SCOPE = "openid fhirUser offline_access user/*.rs"
CALLBACK = "/console/callback"
SESSION, REFRESH, CSRF, SIGN_IN, FLASH = ("fhir_console", "fhir_console_refresh", "fhir_console_csrf",
                                          "fhir_console_signin", "fhir_console_flash")


@dataclass
class Place:
    """Where this request's tenant has its console: absolute root, the console's path, its FHIR base."""

    root: str  # http://host[/t/{tenant}]
    path: str  # /console or /t/{tenant}/console
    fhir_base: str
    secure: bool

    @property
    def callback(self) -> str:
        return self.root + CALLBACK


def place(request: Request) -> Place:
    server: FhirServer = stack_of(request).fhir
    root, base = tenant_urls(request, server.settings.base_url)
    return Place(root, urlsplit(root).path.rstrip("/") + "/console", base, root.startswith("https:"))


def auth_of(request: Request) -> SmartAuth:
    auth: SmartAuth = stack_of(request).extras["auth"]
    return auth


@dataclass
class Session:
    """A signed-in console user: their access (the token's, for everything done on their behalf)."""

    access: AccessContext
    user: User
    csrf: str
    address: str | None
    cookies: dict[str, str] = field(default_factory=dict)  # renewed tokens, set on the response

    @property
    def admin(self) -> bool:
        return self.user.role == "admin"


def set_cookie(response: Response, place_: Place, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", secure=place_.secure, path=place_.path,
                        max_age=max_age)


def clear_cookies(response: Response, place_: Place) -> None:
    for name in (SESSION, REFRESH, CSRF, SIGN_IN):
        response.delete_cookie(name, path=place_.path, secure=place_.secure, httponly=True, samesite="strict")


def apply(response: Response, request: Request, session: Session | None) -> Response:
    """Renewed tokens (a refresh during this request) go back to the browser with the page."""
    if session is not None and session.cookies:
        here = place(request)
        for name, value in session.cookies.items():
            set_cookie(response, here, name, value)
    return response


# --- sign-in -------------------------------------------------------------------------------------------------

def ensure_client(auth: SmartAuth) -> None:
    """The console's own registration in this tenant's client table (made on the first sign-in)."""
    if auth.store.client_row(CLIENT_ID) is not None:
        return
    with suppress(IntegrityError):  # another request made it first
        auth.store.create_client(CLIENT_NAME, ["authorization_code"], SCOPE, [CALLBACK], public=True,
                                 client_id=CLIENT_ID)


def safe_next(here: Place, target: str | None) -> str:
    """Back to a console page after signing in; anything else (another site, another path) goes home."""
    if target and target.startswith(here.path + "/") and "//" not in target and "\\" not in target:
        return target
    return here.path


async def start(request: Request) -> Response:
    """GET /console/sign-in: to the SMART sign-in page, with a fresh state and PKCE verifier kept here."""
    auth = auth_of(request)
    here = place(request)
    await run_in_threadpool(ensure_client, auth)
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode({"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": here.callback,
                       "scope": SCOPE, "state": state, "aud": here.fhir_base, "code_challenge": challenge,
                       "code_challenge_method": "S256"})
    authorize = urlsplit(auth.urls(request).authorize).path  # same host as this page
    response = RedirectResponse(f"{authorize}?{query}", status_code=303)
    nxt = safe_next(here, request.query_params.get("next"))
    set_cookie(response, here, SIGN_IN, f"{state} {verifier} {nxt}", max_age=600)
    return response


@dataclass
class SignedIn:
    tokens: dict[str, Any] | None  # the token response; None: refused (``error`` says why)
    error: str | None = None
    next: str = ""


async def finish(request: Request) -> SignedIn:
    """GET /console/callback: the state checked against ours, the code exchanged with our verifier."""
    here = place(request)
    state, verifier, nxt = [*request.cookies.get(SIGN_IN, "").split(" "), "", "", ""][:3]
    given = request.query_params.get("state", "")
    if not state or not hmac.compare_digest(state, given):
        return SignedIn(None, "The sign-in expired or did not start here. Sign in again.")
    if request.query_params.get("error"):
        return SignedIn(None, "The sign-in was cancelled.")
    code = request.query_params.get("code", "")
    status, body = await _exchange(request, [("grant_type", "authorization_code"), ("code", code),
                                             ("redirect_uri", here.callback), ("client_id", CLIENT_ID),
                                             ("code_verifier", verifier)])
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        return SignedIn(None, "The sign-in could not be completed. Sign in again.")
    return SignedIn(body, None, safe_next(here, nxt))


async def _exchange(request: Request, form: list[tuple[str, str]]) -> tuple[int, Any]:
    """The token endpoint's own code path (audited there as token issue or refresh)."""
    auth = auth_of(request)
    urls: Urls = auth.urls(request)
    sreq = SmartRequest("POST", urls.token, {}, [], form)
    status, body, _headers = await _call(urls, _token, auth, sreq, request.client.host if request.client else None)
    if isinstance(body, str | bytes):
        body = orjson.loads(body or b"{}")
    return status, body


def csrf_token() -> str:
    return secrets.token_urlsafe(32)


# --- each request --------------------------------------------------------------------------------------------

async def current(request: Request) -> tuple[Session | None, str | None]:
    """(the session, None), or (None, the role of a signed-in user the console refuses), or (None, None)."""
    auth = auth_of(request)
    urls = auth.urls(request)
    token = request.cookies.get(SESSION, "")
    renewed: dict[str, str] = {}
    claims = await _call(urls, auth.server.verify_access_token, token) if token else None
    if claims is None and request.cookies.get(REFRESH):
        status, body = await _exchange(request, [("grant_type", "refresh_token"), ("client_id", CLIENT_ID),
                                                 ("refresh_token", request.cookies.get(REFRESH, ""))])
        if status == 200 and isinstance(body, dict) and body.get("access_token"):
            renewed = {SESSION: body["access_token"], REFRESH: body.get("refresh_token", "")}
            claims = await _call(urls, auth.server.verify_access_token, body["access_token"])
    if claims is None or claims.get("client_id") != CLIENT_ID or not claims.get("role"):
        return None, None
    user = await run_in_threadpool(auth.store.user, str(claims.get("sub")))
    if user is None:  # deactivated since
        return None, None
    if user.role not in CONSOLE_ROLES:
        return None, user.role
    csrf = request.cookies.get(CSRF) or ""
    if not csrf:
        csrf = renewed[CSRF] = csrf_token()
    access = auth.server.access_context(claims)
    return Session(access, user, csrf, request.client.host if request.client else None, renewed), None


def csrf_ok(session: Session, form: dict[str, str]) -> bool:
    sent = form.get("csrf_token", "")
    return bool(sent) and hmac.compare_digest(sent, session.csrf)


async def claims_of(request: Request, token: str) -> dict[str, Any] | None:
    auth = auth_of(request)
    claims: dict[str, Any] | None = await _call(auth.urls(request), auth.server.verify_access_token, token)
    return claims


async def end(request: Request, refresh: str) -> None:
    """Revoke a console sign-in: its refresh family and every access token carrying it."""
    auth = auth_of(request)
    client = await run_in_threadpool(auth.server.query_client, CLIENT_ID)
    if client is not None:
        await _call(auth.urls(request), auth.server.revoke, refresh, client)

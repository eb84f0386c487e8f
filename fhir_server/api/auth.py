"""SMART on FHIR over HTTP: discovery, /auth/authorize (sign-in + consent), /auth/token, introspection,
revocation, JWKS and EHR launch; and the bearer check the FHIR endpoint calls (``bearer_access``).

Only adapts Starlette to ``fhir_server.auth``: the OAuth 2 logic is authlib's, behind
``SmartAuthorizationServer``. Routes are included before the FHIR catch-all route.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson
from authlib.oauth2 import OAuth2Error
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.shared_access import shared_access
from fhir_server.api.tenants import stack_of, tenant_urls
from fhir_server.audit.codes import DCM, coding, own
from fhir_server.audit.events import Actor
from fhir_server.audit.service import actor_of
from fhir_server.auth import picker
from fhir_server.auth.access import AccessContext
from fhir_server.auth.authorization import ISSUED, SmartAuthorizationServer, SmartRequest
from fhir_server.auth.clients import CURRENT_URLS, Urls
from fhir_server.auth.cors import CorsMiddleware, RegisteredOrigins
from fhir_server.auth.discovery import capability_security, smart_configuration
from fhir_server.auth.keys import KeyRing
from fhir_server.auth.launch import check_launch
from fhir_server.auth.pages import HEADERS, authorize_page, error_page, picker_page
from fhir_server.auth.ratelimit import RateLimiter
from fhir_server.auth.scopes import describe, split
from fhir_server.auth.store import AuthStore, User
from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import SystemAccess, as_system
from fhir_server.tenancy.limits import user_limit
from fhir_server.tenancy.model import DEFAULT
from fhir_server.tenancy.stacks import Tenants

router = APIRouter()
T = TypeVar("T")
CSRF_COOKIE = "smart_csrf"
# Form fields of our own page, never passed on as OAuth parameters.
PAGE_FIELDS = {"username", "password", "csrf_token", "decision", "patient", "pick_ticket", "q_name",
               "q_identifier", "q_birthdate"}
PUBLIC_FHIR_PATHS = {"metadata", ".well-known/smart-configuration"}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class SmartAuth:
    """The authorization server and its store for one app (``app.state.auth``)."""

    def __init__(self, server: FhirServer, max_users: Callable[[], int | None] | None = None) -> None:
        self.fhir = server
        self.settings = server.settings
        self.store = AuthStore(server.engine, max_users)  # max_users: a tenant's limit (tenancy/limits.py)
        self.keys = KeyRing(server.engine, server.settings.auth_key_rotation_days)
        self.server = SmartAuthorizationServer(server.settings, self.store, self.keys)
        self.origins = RegisteredOrigins(server.engine)  # CORS for registered browser apps
        self.login_limit = RateLimiter(server.engine, "login", server.settings.auth_login_rate_per_minute)
        self.token_limit = RateLimiter(server.engine, "token", server.settings.auth_token_rate_per_minute)
        tenant = server.settings.tenant
        server.security = lambda base: capability_security(Urls.at(_root_of(base, tenant), base))  # rest.security

    def urls(self, request: Request) -> Urls:
        return Urls.at(*tenant_urls(request, self.settings.base_url))


def _root_of(fhir_base: str, tenant: str = DEFAULT) -> str:
    """The root of the auth endpoints beside a FHIR base: /fhir -> /, /fhir/{tenant} -> /t/{tenant}."""
    if tenant != DEFAULT:
        return fhir_base.removesuffix(f"/{tenant}").removesuffix("/fhir") + f"/t/{tenant}"
    return fhir_base[: -len("/fhir")] if fhir_base.endswith("/fhir") else fhir_base


def _auth(request: Request) -> SmartAuth:
    auth: SmartAuth = stack_of(request).extras["auth"]
    return auth


async def _call(urls: Urls, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking auth work (database, argon2, RSA) in the thread pool, with this request's URLs."""
    def run() -> T:
        CURRENT_URLS.set(urls)
        return fn(*args)
    return await run_in_threadpool(run)


async def _form(request: Request) -> list[tuple[str, str]]:
    if request.method != "POST":
        return []
    body = await request.body()
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


async def _too_many(limiter: RateLimiter, request: Request) -> Response | None:
    if limiter.per_minute <= 0:
        return None
    wait = await run_in_threadpool(limiter.retry_after, request.client.host if request.client else "unknown")
    if not wait:
        return None
    return JSONResponse({"error": "slow_down", "error_description": "Too many requests; retry later"},
                        status_code=429, headers={"Retry-After": str(wait), **NO_STORE})


def _oauth_response(result: tuple[int, Any, list[tuple[str, str]]]) -> Response:
    status, body, headers = result
    out = {k: v for k, v in headers if k.lower() != "content-type"}
    if status == 302:
        return RedirectResponse(out.pop("Location"), status_code=302, headers=out)
    payload = body if isinstance(body, dict | list) else orjson.loads(body or "{}")
    return JSONResponse(payload, status_code=status, headers={**out, **NO_STORE})


# --- discovery -----------------------------------------------------------------------------------------------

@router.get("/fhir/.well-known/smart-configuration", summary="SMART App Launch discovery")
async def well_known(request: Request) -> Response:
    return JSONResponse(smart_configuration(_auth(request).urls(request)), headers={"Cache-Control": "max-age=300"})


@router.get("/auth/jwks", summary="Public keys of access tokens and id_tokens")
async def jwks(request: Request) -> Response:
    auth = _auth(request)
    return JSONResponse(await _call(auth.urls(request), auth.keys.jwks), headers={"Cache-Control": "max-age=300"})


# --- authorization endpoint ----------------------------------------------------------------------------------

# One route per method: a two-method route gives both the same OpenAPI operationId.
@router.get("/auth/authorize", summary="Sign in and consent (authorization code)", operation_id="authorize_get")
@router.post("/auth/authorize", summary="Sign in and consent (the form's answer)", operation_id="authorize_post")
async def authorize(request: Request) -> Response:
    auth = _auth(request)
    urls = auth.urls(request)
    form = await _form(request)
    pairs = [(k, v) for k, v in (request.query_params.multi_items() if request.method == "GET" else form)
             if k not in PAGE_FIELDS]
    fields = dict(form)
    sreq = SmartRequest(request.method, urls.authorize, request.headers, pairs, [])
    if request.method == "POST":
        if (limited := await _too_many(auth.login_limit, request)) is not None:
            return limited
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, fields.get("csrf_token", "")):
            return _html(error_page("The sign-in form expired or was not sent from this site. Start again from "
                                    "the app."), 400)
    return await _call(urls, _authorize, auth, request, urls, sreq, fields)


def _authorize(auth: SmartAuth, request: Request, urls: Urls, sreq: SmartRequest, fields: dict[str, str]) -> Response:
    server = auth.server
    try:
        grant = server.get_consent_grant(sreq)
    except OAuth2Error as error:
        if error.redirect_uri:
            return _oauth_response(server.handle_error_response(sreq, error))
        return _html(error_page(error.description or error.error), 400)
    data = sreq.payload.data
    launch_context: dict[str, Any] | None = None
    try:
        if data.get("aud", "").rstrip("/") != urls.issuer:
            raise _redirect_error(grant, "invalid_request", "aud must be this server's FHIR base URL")
        if data.get("launch"):
            launch_context = auth.store.launch_context(data["launch"])
            if launch_context is None:
                raise _redirect_error(grant, "invalid_request", "Unknown or expired launch")
    except OAuth2Error as error:
        return _oauth_response(server.handle_error_response(sreq, error))
    granted = split(sreq.scope)
    ask_patient = "launch/patient" in granted and launch_context is None
    client = grant.request.client

    def with_csrf(html: str, csrf: str, status: int) -> Response:
        response = _html(html, status)
        # Scoped to this tenant's /auth (/t/{tenant}/auth): one hospital's sign-in never sees another's cookie.
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                            path=urlsplit(urls.authorize).path.rsplit("/", 1)[0],
                            secure=urls.authorize.startswith("https:"))
        return response

    def page(error: str | None = None, status: int = 200) -> Response:
        csrf = secrets.token_urlsafe(32)
        # A relative action: the password goes back to the host the page came from, whatever Host said.
        html = authorize_page(action=urlsplit(urls.authorize).path, client_name=client.name, csrf=csrf, error=error,
                              scopes=[(s, describe(s)) for s in granted], hidden=sreq.payload.pairs,
                              username=fields.get("username", ""))
        return with_csrf(html, csrf, status)

    def pick(user: User, ticket: str, error: str | None = None, status: int = 200) -> Response:
        query = {k: fields.get(k, "").strip() for k in ("q_name", "q_identifier", "q_birthdate")}
        found = picker.search(auth.fhir, user, query["q_name"], query["q_identifier"], query["q_birthdate"],
                              urls.issuer)
        csrf = secrets.token_urlsafe(32)
        html = picker_page(action=urlsplit(urls.authorize).path, client_name=client.name, csrf=csrf, ticket=ticket,
                           hidden=sreq.payload.pairs, query=query, error=error,
                           patients=[(str(p["id"]), *picker.label(p)) for p in found])
        return with_csrf(html, csrf, status)

    if request.method == "GET":
        return page()
    ticket = fields.get("pick_ticket", "")
    user: User | None
    if ticket:  # step two: signed in already, choosing the patient
        user_id = picker.ticket_user(auth.keys, ticket, client.client_id, sreq.payload.pairs)
        user = auth.store.user(user_id) if user_id else None
        if user is None:
            return _html(error_page("The sign-in expired. Start again from the app."), 400)
        if fields.get("decision") == "search":
            return pick(user, ticket)
    if fields.get("decision") != "allow":
        return _oauth_response(server.create_authorization_response(sreq, grant_user=None, grant=grant))
    if not ticket:
        user = auth.store.login(fields.get("username", ""), fields.get("password", ""))
        _audit_login(auth, request, client.client_id, fields.get("username", ""), user)
        if user is None:  # one message for unknown user, wrong password and locked account
            return page("The username or password is not right, or the account is locked for a while.", 401)
    assert user is not None
    context = dict(launch_context or {})
    if ask_patient:
        picked = fields.get("patient", "").strip()
        if user.role != "patient" and not picked:  # sign-in done: now the patient picker
            return pick(user, ticket or picker.issue_ticket(auth.keys, user, client.client_id, sreq.payload.pairs))
        patient = _standalone_patient(auth, user, picked, urls.issuer)
        if patient is None:
            if user.role == "patient":
                return page("This account is not linked to a Patient.", 400)
            return pick(user, ticket or picker.issue_ticket(auth.keys, user, client.client_id, sreq.payload.pairs),
                        "Choose one of the patients listed: that one is not a patient you may see.", 400)
        context.update(patient=patient, need_patient_banner=True)
    elif user.role == "patient" and user.fhir_user and user.fhir_user.startswith("Patient/"):
        context.setdefault("patient", user.fhir_user.split("/", 1)[1])
    if data.get("nonce"):
        context["nonce"] = data["nonce"]
    sreq.smart_context = context
    return _oauth_response(server.create_authorization_response(sreq, grant_user=user, grant=grant))


def _standalone_patient(auth: SmartAuth, user: User, picked: str, base_url: str) -> str | None:
    """launch/patient in a standalone launch: a patient user is their own patient; others pick one that their
    role may read (the picker lists only those; an id sent directly is checked the same way)."""
    if user.role == "patient":
        own = user.fhir_user or ""
        return own.split("/", 1)[1] if own.startswith("Patient/") else None
    if not picked or not picker.readable(auth.fhir, user, picked, base_url):
        return None
    return picked


def _redirect_error(grant: Any, code: str, description: str) -> OAuth2Error:
    error = OAuth2Error(description=description, redirect_uri=grant.redirect_uri)
    error.error = code
    error.state = grant.request.payload.state
    return error


def _html(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers=HEADERS)


# --- token, introspection, revocation, launch ------------------------------------------------------------------

@router.post("/auth/token", summary="OAuth 2 token endpoint")
async def token(request: Request) -> Response:
    auth = _auth(request)
    if (limited := await _too_many(auth.token_limit, request)) is not None:
        return limited
    urls = auth.urls(request)
    sreq = SmartRequest("POST", urls.token, request.headers, [], await _form(request))
    return _oauth_response(await _call(urls, _token, auth, sreq, _address(request)))


def _token(auth: SmartAuth, sreq: SmartRequest, address: str | None) -> tuple[int, Any, list[tuple[str, str]]]:
    ISSUED.set(None)
    result = auth.server.create_token_response(sreq)
    audit = auth.fhir.audit
    if audit is not None:  # token issue or refresh, granted or refused: DCM 110114 User Authentication
        issued = ISSUED.get()
        if issued is not None:
            client_id, user = issued
            actor = Actor(address, client_id, user.id if user else None, user.username if user else None,
                          user.fhir_user if user else None, user.role if user else None)
        else:  # refused: the client id it claimed (never its secret or assertion)
            actor = Actor(address, _claimed_client(sreq))
        refresh = sreq.form.get("grant_type") == "refresh_token"
        audit.authentication(own("token-refresh", "Access token refreshed") if refresh
                             else own("token-issue", "Access token issued"), result[0], actor)
    return result


def _claimed_client(sreq: SmartRequest) -> str | None:
    if sreq.form.get("client_id"):
        return sreq.form["client_id"][:64]
    scheme, _, value = (sreq.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[0][:64] or None
        except (ValueError, binascii.Error):
            return None
    return None


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _audit_login(auth: SmartAuth, request: Request, client_id: str, username: str, user: User | None) -> None:
    """Sign-in, successful or not (DCM 110114 / 110122 Login); the password is never part of it."""
    if auth.fhir.audit is None:
        return
    actor = Actor(_address(request), client_id, user.id if user else None, username[:150] or None,
                  user.fhir_user if user else None, user.role if user else None)
    auth.fhir.audit.authentication(coding(DCM, "110122"), 200 if user else 401, actor)


def _client_then(auth: SmartAuth, sreq: SmartRequest, methods: list[str], endpoint: str,
                 then: Callable[[Any], Any], address: str | None) -> tuple[int, Any, list[tuple[str, str]]]:
    try:
        client = auth.server.authenticate_client(sreq, methods, endpoint)
    except OAuth2Error as error:
        result = auth.server.handle_error_response(sreq, error)
        client_id = _claimed_client(sreq)
    else:
        result, client_id = (200, then(client), []), client.client_id
    if auth.fhir.audit is not None:  # who asked about or revoked tokens (never the token itself)
        auth.fhir.audit.authentication(own(f"token-{endpoint}", f"Token {endpoint}"), result[0],
                                       Actor(address, client_id))
    return result


@router.post("/auth/introspect", summary="RFC 7662 token introspection")
async def introspect(request: Request) -> Response:
    auth = _auth(request)
    urls = auth.urls(request)
    sreq = SmartRequest("POST", urls.introspect, request.headers, [], await _form(request))
    token_value = sreq.form.get("token", "")
    return _oauth_response(await _call(urls, _client_then, auth, sreq, ["client_secret_basic", "private_key_jwt"],
                                       "introspection", lambda c: auth.server.introspect(token_value, c),
                                       _address(request)))


@router.post("/auth/revoke", summary="RFC 7009 token revocation")
async def revoke(request: Request) -> Response:
    auth = _auth(request)
    urls = auth.urls(request)
    sreq = SmartRequest("POST", urls.revoke, request.headers, [], await _form(request))
    token_value = sreq.form.get("token", "")
    return _oauth_response(await _call(urls, _client_then, auth, sreq,
                                       ["none", "client_secret_basic", "private_key_jwt"], "revocation",
                                       lambda c: _revoke(auth, token_value, c), _address(request)))


def _revoke(auth: SmartAuth, token_value: str, client: Any) -> dict[str, Any]:
    auth.server.revoke(token_value, client)
    return {}


@router.post("/auth/launch", summary="EHR launch: a launch id bound to a patient (and encounter)")
async def launch(request: Request) -> Response:
    auth = _auth(request)
    urls = auth.urls(request)
    access = await bearer_access(request, "auth/launch", required=True, audit=False)
    if isinstance(access, Response):
        return access
    if not isinstance(access, AccessContext):  # LOCAL_MODE cannot happen with required=True
        return _unauthorized("Authentication is required: send an OAuth 2 bearer access token")
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    try:
        data = orjson.loads(body) if "json" in content_type and body else dict(parse_qsl(body.decode()))
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        return JSONResponse({"error": "invalid_request", "error_description": "a JSON object or a form"}, 400)
    context: dict[str, Any] = {k: str(data[k]) for k in ("patient", "encounter") if data.get(k)}
    if "patient" not in context:
        return JSONResponse({"error": "invalid_request", "error_description": "patient is required"}, 400)
    context["need_patient_banner"] = bool(data.get("need_patient_banner", False))
    try:  # an EHR-side caller that may read this patient (fhir_server/auth/launch.py)
        await _call(urls, check_launch, auth.fhir.uow, access, context)
    except FhirError as exc:
        _audit_admin(auth, request, access if isinstance(access, AccessContext) else None, "launch",
                     "EHR launch context issued", exc.status, f"Patient/{context['patient']}")
        error = "insufficient_scope" if exc.status == 403 else "invalid_request"
        return JSONResponse({"error": error, "error_description": exc.message}, status_code=exc.status)
    launch_id = await _call(urls, auth.store.create_launch, context)
    _audit_admin(auth, request, access if isinstance(access, AccessContext) else None, "launch",
                 "EHR launch context issued", 200, f"Patient/{context['patient']}")
    return JSONResponse({"launch": launch_id, "expires_in": 300}, headers=NO_STORE)


def _audit_admin(auth: SmartAuth, request: Request, access: AccessContext | None, code: str, display: str,
                 status: int, target: str | None = None) -> None:
    """Launch contexts and client registrations: who did it, from where, with what outcome."""
    if auth.fhir.audit is not None:
        auth.fhir.audit.authentication(own(code, display), status, actor_of(access, _address(request)),
                                       targets=[target] if target else [])


@router.post("/auth/clients", summary="Register a client (admin users only; RFC 7591-style metadata)")
async def register_client(request: Request) -> Response:
    auth = _auth(request)
    access = await bearer_access(request, "auth/clients", required=True, audit=False)
    if isinstance(access, Response):
        return access
    if not isinstance(access, AccessContext) or access.role != "admin":
        who = access if isinstance(access, AccessContext) else None
        _audit_admin(auth, request, who, "client-registration", "OAuth client registered", 403)
        return JSONResponse({"error": "insufficient_scope", "error_description": "Only admin users register clients"},
                            status_code=403)
    try:
        meta = orjson.loads(await request.body())
        grants = meta.get("grant_types") or ["authorization_code"]
        if not isinstance(meta.get("client_name"), str) or not isinstance(meta.get("scope"), str) \
                or not set(grants) <= {"authorization_code", "client_credentials", "refresh_token"}:
            raise ValueError("client_name and scope are required; grant_types: authorization_code, "
                             "client_credentials")
        created = await _call(auth.urls(request), auth.store.create_client, meta["client_name"], list(grants),
                              meta["scope"], [str(u) for u in meta.get("redirect_uris") or []],
                              meta.get("token_endpoint_auth_method") == "none", meta.get("jwks"),
                              meta.get("jwks_uri"), meta.get("resource_server") is True)
    except (ValueError, AttributeError, TypeError) as exc:
        _audit_admin(auth, request, access, "client-registration", "OAuth client registered", 400)
        return JSONResponse({"error": "invalid_client_metadata", "error_description": str(exc)}, status_code=400)
    _audit_admin(auth, request, access, "client-registration", "OAuth client registered", 201)
    auth.origins.refresh()
    return JSONResponse(created, status_code=201, headers=NO_STORE)


# --- the bearer check of the FHIR endpoint -----------------------------------------------------------------------

# A request without a token where none is required (FHIR_AUTH_REQUIRED=false: a developer's machine, the
# embedded default on loopback) acts with full access, and says so here.
LOCAL_MODE = as_system("no bearer token and none required (FHIR_AUTH_REQUIRED=false)")
# The public paths (/metadata) without a token when auth is required: a caller who may read no resource.
ANONYMOUS = AccessContext(())

def _unauthorized(message: str, error: str | None = None) -> Response:
    challenge = 'Bearer realm="fhir"' + (f', error="{error}"' if error else "")
    body = orjson.dumps(operation_outcome([Issue("login", message)]))
    return Response(body, status_code=401, media_type="application/fhir+json",
                    headers={"WWW-Authenticate": challenge})


async def bearer_access(request: Request, path: str, *, required: bool | None = None,
                        audit: bool = True) -> AccessContext | SystemAccess | Response:
    """The access context of the request's bearer token; ``LOCAL_MODE`` (full access, by an explicit choice)
    for a request without a token when auth is not required; a 401 response when the token is missing (and
    required), malformed, expired, revoked or tampered (audited as a refused FHIR interaction when ``audit``)."""
    auth: SmartAuth | None = stack_of(request).extras.get("auth")  # the tenant's own keys and issuer
    if auth is None:
        return LOCAL_MODE
    result = await _bearer_access(auth, request, path, required)
    if audit and isinstance(result, Response) and auth.fhir.audit is not None:
        auth.fhir.audit.denied(request.method, path, result.status_code, _address(request))
    return result


async def _bearer_access(auth: SmartAuth, request: Request, path: str,
                         required: bool | None) -> AccessContext | SystemAccess | Response:
    header = request.headers.get("authorization")
    if header is None:
        must = auth.settings.auth_required if required is None else required
        if not must:
            return LOCAL_MODE
        if path.strip("/") in PUBLIC_FHIR_PATHS:
            return ANONYMOUS
        return _unauthorized("Authentication is required: send an OAuth 2 bearer access token")
    scheme, _, token_value = header.partition(" ")
    if scheme.lower() != "bearer" or not token_value.strip():
        return _unauthorized("Only Bearer tokens are accepted", "invalid_request")
    claims = await _call(auth.urls(request), auth.server.verify_access_token, token_value.strip())
    if claims is None:  # another hospital's token: worth something here only through a patient share
        shared = await shared_access(auth, request, token_value.strip(), path)
        if shared is not None:
            return shared
        return _unauthorized("The access token is not valid (expired, revoked or not issued here)", "invalid_token")
    return auth.server.access_context(claims)


def install(app: FastAPI, server: FhirServer) -> None:
    """SMART on FHIR for one app: the authorization server, its routes (before the FHIR catch-all route)
    and CORS for registered browser apps."""
    app.state.auth = SmartAuth(server)
    tenants: Tenants = app.state.tenants
    tenants.default.extras["auth"] = app.state.auth
    tenants.on_new.append(lambda stack: stack.extras.setdefault("auth", SmartAuth(
        stack.fhir, max_users=partial(user_limit, tenants.store, stack.code))))
    app.include_router(router)
    app.add_middleware(CorsMiddleware, origins=lambda scope: stack_of(scope).extras["auth"].origins,
                       run_sync=run_in_threadpool)

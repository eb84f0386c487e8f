"""The console's users and clients page (admins only): register, deactivate, reset a password; register a
client, revoke it, rotate its secret. The work is fhir_server/auth's (store.py, manage.py); each action is
audited as a User Authentication event, as client registration over /auth/clients is. A generated password or
secret is shown once, on the answer to the POST (no-store), and never logged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from fhir_server.audit.codes import own
from fhir_server.audit.service import actor_of
from fhir_server.auth import manage
from fhir_server.auth.roles import ROLES
from fhir_server.auth.store import UserLimitReached
from fhir_server.console.session import CLIENT_ID, Session, auth_of
from fhir_server.console.web import back, guard, guard_post, message, page, path_of

router = APIRouter(include_in_schema=False)
GRANTS = ("authorization_code", "client_credentials")


def _audit(request: Request, session: Session, code: str, display: str, status: int, target: str) -> None:
    auth = auth_of(request)
    if auth.fhir.audit is not None:
        auth.fhir.audit.authentication(own(code, display), status, actor_of(session.access, session.address),
                                       targets=[target])


@router.get("/console/people")
async def people(request: Request) -> Response:
    session = await guard(request, admin=True)
    if isinstance(session, Response):
        return session
    store = auth_of(request).store
    users, clients = await run_in_threadpool(lambda: (manage.list_users(store), manage.list_clients(store)))
    return page(request, session, "people.html", title="Users and clients", users=users, clients=clients,
                roles=ROLES, grants=GRANTS, console_client=CLIENT_ID)


def _secret_page(request: Request, session: Session, title: str, what: str, value: str) -> Response:
    return page(request, session, "secret.html", title=title, what=what, value=value)


@router.post("/console/people/users")
async def create_user(request: Request) -> Response:
    checked = await guard_post(request, admin=True)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    store = auth_of(request).store
    username, role = form.get("username", "").strip(), form.get("role", "")
    fhir_user = form.get("fhir_user", "").strip() or None
    if not username or len(username) > 150:
        return message(request, session, 400, "New user", "A username of 1 to 150 characters is required.")
    password = manage.new_password()
    try:
        user = await run_in_threadpool(store.create_user, username, password, role, fhir_user)
    except (ValueError, UserLimitReached) as exc:
        _audit(request, session, "user-create", "User created", 400, f"user/{username[:64]}")
        return message(request, session, 400, "New user", str(exc))
    except IntegrityError:
        return message(request, session, 409, "New user", f"A user named {username} exists already.")
    _audit(request, session, "user-create", "User created", 201, f"user/{user.id}")
    return _secret_page(request, session, "User created", f"The password of {username} ({role})", password)


@router.post("/console/people/users/{user_id}/password")
async def reset_password(request: Request, user_id: str) -> Response:
    checked = await guard_post(request, admin=True)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    password = await run_in_threadpool(manage.reset_password, auth_of(request).store, user_id)
    _audit(request, session, "user-password-reset", "User password reset", 200 if password else 404,
           f"user/{user_id}")
    if password is None:
        return message(request, session, 404, "Reset a password", "No such user.")
    return _secret_page(request, session, "Password reset", "The new password", password)


@router.post("/console/people/users/{user_id}/deactivate")
async def deactivate(request: Request, user_id: str) -> Response:
    checked = await guard_post(request, admin=True)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    auth = auth_of(request)
    if user_id == session.user.id:
        return message(request, session, 400, "Deactivate a user", "You cannot deactivate yourself.")
    done = await run_in_threadpool(manage.deactivate_user, auth.store, user_id, auth.settings.auth_access_token_seconds)
    _audit(request, session, "user-deactivate", "User deactivated", 200 if done else 404, f"user/{user_id}")
    return back(request, session, path_of(request, "/console/people"),
                "User deactivated: their sign-ins and tokens have ended." if done else "No such active user.")


@router.post("/console/people/clients")
async def create_client(request: Request) -> Response:
    checked = await guard_post(request, admin=True)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    auth = auth_of(request)
    name, scope = form.get("name", "").strip(), form.get("scope", "").strip()
    grant = form.get("grant", "")
    redirects = [u.strip() for u in form.get("redirect_uris", "").split() if u.strip()]
    if not name or not scope or grant not in GRANTS:
        return message(request, session, 400, "New client", "A name, a scope and a grant type are required.")
    try:
        created = await run_in_threadpool(lambda: auth.store.create_client(
            name[:200], [grant], scope, redirects, public=form.get("public") == "yes"))
    except ValueError as exc:
        _audit(request, session, "client-registration", "OAuth client registered", 400, "client/new")
        return message(request, session, 400, "New client", str(exc))
    _audit(request, session, "client-registration", "OAuth client registered", 201, f"client/{created['client_id']}")
    auth.origins.refresh()
    secret = created.get("client_secret")
    what = f"Client {created['client_id']} ({name})"
    if secret:
        return _secret_page(request, session, "Client registered", f"The secret of {what}", secret)
    return back(request, session, path_of(request, "/console/people"), f"{what} registered (no secret).")


@router.post("/console/people/clients/{client_id}/revoke")
async def revoke_client(request: Request, client_id: str) -> Response:
    checked = await guard_post(request, admin=True)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    if client_id == CLIENT_ID:
        return message(request, session, 400, "Revoke a client", "The console's own client cannot be revoked here.")
    auth = auth_of(request)
    done = await run_in_threadpool(manage.revoke_client, auth.store, client_id)
    _audit(request, session, "client-revoke", "OAuth client revoked", 200 if done else 404, f"client/{client_id}")
    auth.origins.refresh()
    return back(request, session, path_of(request, "/console/people"),
                f"Client {client_id} revoked: its tokens no longer work." if done else "No such active client.")


@router.post("/console/people/clients/{client_id}/rotate")
async def rotate(request: Request, client_id: str) -> Response:
    checked = await guard_post(request, admin=True)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    secret = await run_in_threadpool(manage.rotate_secret, auth_of(request).store, client_id)
    _audit(request, session, "client-secret-rotate", "OAuth client secret rotated", 200 if secret else 404,
           f"client/{client_id}")
    if secret is None:
        return message(request, session, 404, "Rotate a secret", "No active client with a secret has that id.")
    return _secret_page(request, session, "Secret rotated", f"The new secret of client {client_id}", secret)

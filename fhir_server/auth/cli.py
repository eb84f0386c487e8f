"""``fhir-server users create`` and ``fhir-server clients create``: each prints a JSON object."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import IntegrityError

from fhir_server.auth.roles import ROLES
from fhir_server.auth.store import AuthStore
from fhir_server.config import Settings


def add_parsers(sub: Any) -> None:
    users = sub.add_parser("users", help="manage users (hospital staff and patients)")
    users_sub = users.add_subparsers(dest="action", required=True)
    create_user = users_sub.add_parser("create", help="create a user; prints its id (and a generated password)")
    create_user.add_argument("--username", required=True)
    create_user.add_argument("--role", required=True, choices=ROLES)
    create_user.add_argument("--fhir-user", help="the user's own resource, e.g. Practitioner/1 or Patient/7")
    create_user.add_argument("--password", help="default: $FHIR_NEW_PASSWORD, else a generated one (printed)")

    clients = sub.add_parser("clients", help="manage registered SMART apps and backend services")
    clients_sub = clients.add_subparsers(dest="action", required=True)
    create_client = clients_sub.add_parser("create", help="register a client; prints its credentials")
    create_client.add_argument("--name", required=True)
    create_client.add_argument("--grant", required=True, action="append",
                               choices=["authorization_code", "client_credentials"])
    create_client.add_argument("--scope", required=True, help='the most it may be granted, e.g. "system/*.rs"')
    create_client.add_argument("--redirect-uri", action="append", default=[])
    create_client.add_argument("--public", action="store_true", help="a public app (no secret; PKCE required)")
    create_client.add_argument("--jwks-file", help="JWKS of the client's public keys (private_key_jwt)")
    create_client.add_argument("--jwks-uri", help="where the client publishes its JWKS (private_key_jwt)")
    create_client.add_argument("--resource-server", action="store_true",
                               help="may introspect tokens issued to other clients (an API gateway)")


def run(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade
    from fhir_server.tenancy.limits import command_user_limit

    engine = make_engine(settings)
    upgrade(engine)
    store = AuthStore(engine, command_user_limit(settings))  # a tenant's max-users (fhir_server/tenancy)
    try:
        if args.command == "users":
            password = args.password or os.environ.get("FHIR_NEW_PASSWORD")
            generated = password is None
            password = password or "Aa1!" + secrets.token_urlsafe(18)
            user = store.create_user(args.username, password, args.role, args.fhir_user)
            result: dict[str, Any] = {"id": user.id, "username": user.username, "role": user.role}
            if user.fhir_user:
                result["fhirUser"] = user.fhir_user
            if generated:
                result["password"] = password
        else:
            jwks = json.loads(Path(args.jwks_file).read_text()) if args.jwks_file else None
            result = store.create_client(args.name, list(dict.fromkeys(args.grant)), args.scope, args.redirect_uri,
                                         public=args.public, jwks=jwks, jwks_uri=args.jwks_uri,
                                         resource_server=args.resource_server)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except IntegrityError:
        print(f"error: {args.command[:-1]} already exists", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(json.dumps(result, indent=2), file=out)
    return 0


FIRST_START = """\
First start: created the user "admin" (role admin) with the password
    {password}
It is shown once; change it by creating your own admin user. Register apps with, for example:
    fhir-server clients create --name "My app" --grant authorization_code --public \\
        --redirect-uri http://localhost:3000/callback --scope "openid fhirUser launch/patient patient/*.rs"
    fhir-server clients create --name "Backend" --grant client_credentials --scope "system/*.rs"
"""


def first_start(settings: Settings, store: AuthStore, out: TextIO = sys.stdout) -> bool:
    """The embedded default (FHIR_ENVIRONMENT=local) on an empty user table: create an ``admin`` user with a
    generated password and print it once, with how to register apps. Anything else: do nothing."""
    if settings.environment != "local" or store.has_users():
        return False
    password = "Aa1!" + secrets.token_urlsafe(18)
    try:
        store.create_user("admin", password, "admin")
    except IntegrityError:  # another process created it first
        return False
    print(FIRST_START.format(password=password), file=out)
    return True

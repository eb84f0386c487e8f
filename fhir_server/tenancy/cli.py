"""``fhir-server tenants ...``: the platform administration of hospitals on this server (docs/tenancy.md)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any, TextIO

import orjson

from fhir_server.config import Settings
from fhir_server.errors import FhirError
from fhir_server.tenancy.model import DEFAULT, TenantStatus
from fhir_server.tenancy.store import TenantStore


def add_parsers(sub: Any) -> None:
    tenants = sub.add_parser("tenants", help="hospitals on this server (platform administration)")
    t_sub = tenants.add_subparsers(dest="action", required=True)
    create = t_sub.add_parser("create", help="a new hospital, in its own schema (PostgreSQL) or file (SQLite)")
    create.add_argument("--code", required=True, help="its URL segment: /fhir/CODE/...")
    create.add_argument("--name", required=True)
    create.add_argument("--max-users", type=int)
    create.add_argument("--max-patients", type=int)
    t_sub.add_parser("list", help="every hospital and its status")
    for action, text in (("show", "a hospital's figures: patients, users, resources, storage, requests"),
                         ("suspend", "refuse every request, token and HL7 message of a hospital at once"),
                         ("activate", "serve a suspended hospital again"),
                         ("delete", "drop a hospital's data (its code stays, INACTIVE)")):
        p = t_sub.add_parser(action, help=text)
        p.add_argument("code")
        if action == "delete":
            p.add_argument("--yes", action="store_true", help="confirm: the hospital's data is dropped")
    limits = t_sub.add_parser("limits", help="set a hospital's limits (empty: no limit)")
    limits.add_argument("code")
    limits.add_argument("--max-users", type=int)
    limits.add_argument("--max-patients", type=int)
    reset = t_sub.add_parser("reset-password", help="a new password for a hospital's user (printed once)")
    reset.add_argument("code")
    reset.add_argument("--username", required=True)


def migrate_all(settings: Settings, out: TextIO | None = None) -> int:
    """``fhir-server migrate``: the default tenant (and the platform's tables), then every other tenant."""
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade
    from fhir_server.tenancy.engines import tenant_engine

    base = make_engine(settings)
    upgrade(base)
    store = TenantStore(base, settings)
    tenants = [t for t in store.list() if t.status != TenantStatus.INACTIVE]
    for tenant in tenants:
        engine = tenant_engine(base, settings, tenant.code)
        upgrade(engine)
        if engine.dialect.name == "sqlite":
            engine.dispose()
        if out is not None:
            print(f"tenant {tenant.code}: at the latest migration", file=out)
    return len(tenants)


def run(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade

    if settings.tenant != DEFAULT:
        print("tenants: the platform's command; run it without --tenant", file=sys.stderr)
        return 2
    engine = make_engine(settings)
    upgrade(engine)
    store = TenantStore(engine, settings)
    try:
        return _run(args, settings, store, out)
    except FhirError as exc:
        print(f"tenants: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"tenants: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings, store: TenantStore, out: TextIO) -> int:
    from fhir_server.tenancy.metrics import tenant_metrics

    if args.action == "create":
        tenant, seconds = store.create(args.code, args.name, max_users=args.max_users,
                                       max_patients=args.max_patients)
        print(f"tenant {tenant.code} created ({tenant.status.value}) in {seconds:.2f} s: /fhir/{tenant.code}", file=out)
        return 0
    if args.action == "list":
        for t in store.list():
            print(f"{t.code}\t{t.status.value}\t{t.name}", file=out)
        return 0
    if args.action == "show":
        print(orjson.dumps(tenant_metrics(store, settings, args.code), option=orjson.OPT_INDENT_2).decode(), file=out)
        return 0
    if args.action in ("suspend", "activate"):
        status = TenantStatus.SUSPENDED if args.action == "suspend" else TenantStatus.ACTIVE
        print(f"tenant {store.set_status(args.code, status).code}: {status.value}", file=out)
        return 0
    if args.action == "delete":
        if not args.yes:
            print(f"tenants delete: pass --yes to drop every resource of {args.code}", file=sys.stderr)
            return 2
        print(f"tenant {store.delete(args.code).code}: INACTIVE, its data dropped", file=out)
        return 0
    if args.action == "limits":
        t = store.set_limits(args.code, max_users=args.max_users, max_patients=args.max_patients)
        print(f"tenant {t.code}: max users {t.max_users}, max patients {t.max_patients}", file=out)
        return 0
    if args.action == "reset-password":
        return _reset_password(settings, store, args.code, args.username, out)
    return 2


def _reset_password(settings: Settings, store: TenantStore, code: str, username: str, out: TextIO) -> int:
    from fhir_server.auth.store import AuthStore
    from fhir_server.tenancy.engines import tenant_engine

    store.require(code)
    password = os.environ.get("FHIR_NEW_PASSWORD") or "Aa1!" + secrets.token_urlsafe(18)
    engine = tenant_engine(store.base, settings, code)
    try:
        if not AuthStore(engine).set_password(username, password):
            print(f"tenants: no user {username} in {code}", file=sys.stderr)
            return 1
    finally:
        if engine.dialect.name == "sqlite":
            engine.dispose()
    if os.environ.get("FHIR_NEW_PASSWORD"):
        print(f"password of {username} in {code} reset", file=out)
    else:
        print(f"password of {username} in {code} reset to: {password}", file=out)
    return 0

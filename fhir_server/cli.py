"""The ``fhir-server`` command: serve, migrate, load."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from fhir_server import logs
from fhir_server.auth import cli as auth_cli
from fhir_server.config import Settings, get_settings, settings_errors
from fhir_server.jobs import cli as jobs_cli
from fhir_server.packages import cli as packages_cli
from fhir_server.tenancy import cli as tenants_cli
from fhir_server.tenancy.engines import tenant_settings
from fhir_server.tenancy.model import DEFAULT
from fhir_server.workflows import demo
from terminology import cli as terminology_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server", description="Hospital FHIR R4 server")
    parser.add_argument("--tenant", default=None,
                        help="the hospital a command works on (default: FHIR_TENANT, else the default tenant)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="apply pending migrations, then serve the FHIR API")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (PostgreSQL only)")
    serve.add_argument("--mllp-port", type=int, default=None, help="also run the HL7 v2 MLLP listener")
    serve.add_argument("--insecure", action="store_true",
                       help="serve a non-loopback address without FHIR_AUTH_REQUIRED=true (an open API)")
    mllp = sub.add_parser("mllp", help="apply pending migrations, then run the HL7 v2 MLLP listener alone")
    mllp.add_argument("--host", default=None)
    mllp.add_argument("--port", type=int, default=None, help="default FHIR_MLLP_PORT or 2575")
    mllp.add_argument("--workers", type=int, default=1, help="listener processes sharing the port (SO_REUSEPORT)")
    hl7 = sub.add_parser("hl7", help="HL7 v2 message store: stats, replay, load")
    hl7_sub = hl7.add_subparsers(dest="hl7_command", required=True)
    hl7_stats = hl7_sub.add_parser("stats", help="message counts by status (and the latest failures)")
    hl7_stats.add_argument("--errors", type=int, default=0, help="also list the N latest error/rejected messages")
    replay = hl7_sub.add_parser("replay", help="re-run stored messages (after a fix)")
    replay.add_argument("--status", default="error", choices=["error", "received", "rejected"])
    replay.add_argument("--limit", type=int, default=100_000)
    load = hl7_sub.add_parser("load", help="process files of HL7 v2 messages or batches as if sent over MLLP")
    load.add_argument("files", nargs="+", type=Path)
    routes = hl7_sub.add_parser("routes", help="HL7 v2 routing: which hospital takes a receiving facility (MSH-6)")
    routes_sub = routes.add_subparsers(dest="routes_action", required=True)
    add_route = routes_sub.add_parser("add", help="send MSH-6 FACILITY (and MSH-5 APP) to a hospital")
    add_route.add_argument("--tenant", dest="tenant_code", required=True, help="the hospital (default: the install's)")
    routes_sub.add_parser("list", help="the routes")
    remove_route = routes_sub.add_parser("remove", help="remove a route")
    for p in (add_route, remove_route):
        p.add_argument("--facility", required=True, help="MSH-6 receiving facility (its first component)")
        p.add_argument("--application", help="MSH-5 receiving application (unset: any)")
    sub.add_parser("migrate", help="apply pending database migrations")
    load = sub.add_parser("load", help="load Bundles (.json) and resources (.ndjson); prints counts")
    load.add_argument("paths", nargs="+")
    load.add_argument("--upsert", action="store_true",
                      help="loading the same files again creates nothing twice (urn:uuid fullUrls become ids; "
                           "resources without an id are matched by their first identifier)")
    auth_cli.add_parsers(sub)  # users create, clients create (fhir_server/auth/cli.py)
    terminology_cli.add_parsers(sub)  # terminology load-core (terminology/cli.py)
    packages_cli.add_parsers(sub)  # packages install (fhir_server/packages/cli.py)
    jobs_cli.add_parsers(sub)  # worker, outbox list|retry (fhir_server/jobs/cli.py)
    tenants_cli.add_parsers(sub)  # tenants create|list|show|suspend|activate|delete (fhir_server/tenancy/cli.py)
    demo.add_parser(sub)  # seed-demo (fhir_server/workflows/demo)
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        for line in settings_errors(exc):
            print(f"fhir-server: {line}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, logging.INFO)  # FHIR_LOG_FORMAT=json: one object per line
    if args.tenant:
        settings = settings.model_copy(update={"tenant": args.tenant})
    if settings.tenant != DEFAULT:
        if args.command in ("serve", "migrate", "tenants"):  # these serve or look after every tenant
            print(f"fhir-server {args.command} works for every tenant: run it without --tenant", file=sys.stderr)
            return 2
        refusal = tenant_refusal(settings)
        if refusal:
            print(f"fhir-server: {refusal}", file=sys.stderr)
            return 2
        settings = tenant_settings(settings.model_copy(update={"tenant": DEFAULT}), settings.tenant)

    if args.command == "migrate":
        count = tenants_cli.migrate_all(settings, out=sys.stdout)  # the default tenant, then each other one
        print(f"database is at the latest migration ({count + 1} tenant{'s' if count else ''})")
        return 0
    if args.command == "tenants":
        return tenants_cli.run(args, settings)
    if args.command == "serve":
        host = args.host or settings.host
        port = args.port or settings.port
        if not settings.auth_required and not is_loopback(host):
            if not args.insecure:  # secure by default: no open API on a network address by accident
                print(f"refusing to serve {host} without authentication: set FHIR_AUTH_REQUIRED=true "
                      "(or pass --insecure)", file=sys.stderr)
                return 2
            print(f"WARNING: serving {host} with --insecure: the FHIR API needs no token", file=sys.stderr)
        import uvicorn

        from fhir_server.auth.store import AuthStore
        from fhir_server.storage.database import make_engine
        from fhir_server.storage.migrate import upgrade

        if args.mllp_port:
            if args.workers > 1:
                print("--mllp-port needs --workers 1; run `fhir-server mllp` beside the workers", file=sys.stderr)
                return 2
            settings = settings.model_copy(update={"mllp_port": args.mllp_port})

        engine = make_engine(settings)
        tenants_cli.migrate_all(settings)  # the default tenant's schema or file, then every other tenant's
        auth_cli.first_start(settings, AuthStore(engine))  # embedded default: an admin user on first start
        terminology_cli.preload_in_background(settings)  # FHIR R4 core CodeSystems/ValueSets, once
        # FhirHttpProtocol: what uvicorn refuses itself (a 100 KB URL) is answered as an OperationOutcome too.
        if args.workers > 1:
            if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics adds up every worker's requests
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fhir-metrics-")
            from fhir_server.preload import fork_workers, preload

            engine.dispose()  # no connection of this process may be inherited by the forked workers
            preload()  # the definitions, parsed once here and shared by the workers (fhir_server/preload.py)
            fork_workers()
            uvicorn.run("fhir_server.asgi:app", host=host, port=port, workers=args.workers,
                        http="fhir_server.api.http_protocol:FhirHttpProtocol", log_level="info", access_log=False)
        else:
            from fhir_server.api.http_protocol import FhirHttpProtocol
            from fhir_server.app import create_app

            uvicorn.run(create_app(settings), host=host, port=port, http=FhirHttpProtocol, log_level="info",
                        access_log=False)
        return 0
    if args.command == "terminology":
        return terminology_cli.run(args, settings)
    if args.command == "packages":
        return packages_cli.run(args, settings)
    if args.command in ("worker", "outbox"):
        return jobs_cli.run(args, settings)
    if args.command in ("users", "clients"):
        return auth_cli.run(args, settings)
    if args.command in ("mllp", "hl7"):
        from interfaces.mllp.cli import run_command

        return run_command(settings, args)
    if args.command == "seed-demo":
        return demo.run(args, settings)
    if args.command == "load":
        from fhir_server.loader import load_paths
        from fhir_server.rest.server import FhirServer
        from fhir_server.storage.access import as_system
        from fhir_server.storage.database import make_engine
        from fhir_server.storage.migrate import upgrade

        engine = make_engine(settings)
        upgrade(engine)  # a fresh data directory or an older database: bring it to the code's schema first
        return load_paths(settings, args.paths, out=sys.stdout, server=FhirServer(settings, engine),
                          access=as_system("fhir-server load (operator)"), upsert=args.upsert, err=sys.stderr)
    return 2


def tenant_refusal(settings: Settings) -> str | None:
    """Why a command cannot work for ``settings.tenant`` (unknown, not active), or None."""
    from fhir_server.storage.database import make_engine
    from fhir_server.tenancy.model import TenantStatus
    from fhir_server.tenancy.store import TenantStore

    base = make_engine(settings.model_copy(update={"tenant": DEFAULT}))
    try:
        status = TenantStore(base, settings).status(settings.tenant)
    except Exception:  # no platform table yet: a database never migrated
        status = None
    finally:
        base.dispose()
    if status is None:
        return f"no tenant {settings.tenant} (fhir-server tenants list)"
    if status != TenantStatus.ACTIVE:
        return f"tenant {settings.tenant} is {status.value}"
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only answers this machine: 127.0.0.0/8, ::1, localhost."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


if __name__ == "__main__":
    raise SystemExit(main())

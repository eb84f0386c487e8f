"""The ``fhir-server`` command: serve, migrate, load."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fhir_server.auth import cli as auth_cli
from fhir_server.config import get_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server", description="Hospital FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="apply pending migrations, then serve the FHIR API")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (PostgreSQL only)")
    sub.add_parser("migrate", help="apply pending database migrations")
    load = sub.add_parser("load", help="load Bundles (.json) and resources (.ndjson); prints counts")
    load.add_argument("paths", nargs="+")
    auth_cli.add_parsers(sub)  # users create, clients create (fhir_server/auth/cli.py)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()

    if args.command == "migrate":
        from fhir_server.storage.database import make_engine
        from fhir_server.storage.migrate import upgrade

        upgrade(make_engine(settings))
        print("database is at the latest migration")
        return 0
    if args.command == "serve":
        import uvicorn

        from fhir_server.storage.database import make_engine
        from fhir_server.storage.migrate import upgrade

        upgrade(make_engine(settings))
        host = args.host or settings.host
        port = args.port or settings.port
        if args.workers > 1:
            uvicorn.run("fhir_server.asgi:app", host=host, port=port, workers=args.workers,
                        log_level="info", access_log=False)
        else:
            from fhir_server.app import create_app

            uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
        return 0
    if args.command in ("users", "clients"):
        return auth_cli.run(args, settings)
    if args.command == "load":
        from fhir_server.loader import load_paths

        return load_paths(settings, args.paths, out=sys.stdout)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

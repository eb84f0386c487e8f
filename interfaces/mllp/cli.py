"""`fhir-server mllp` and `fhir-server hl7 stats|replay|load` (wired in fhir_server/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from fhir_server.config import Settings


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.migrate import upgrade
    from interfaces.mllp.pipeline import Hl7Pipeline
    from interfaces.mllp.store import MessageStore

    if args.command == "mllp":
        from fhir_server.storage.database import make_engine

        if args.host:
            settings = settings.model_copy(update={"mllp_host": args.host})
        workers = getattr(args, "workers", 1) or 1
        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
        if workers > 1:
            from interfaces.mllp.workers import run_workers

            return run_workers(settings, args.port, workers)
        serve_mllp(settings, args.port)
        return 0
    if args.hl7_command == "routes":
        return routes_command(settings, args)
    server = FhirServer(settings)
    store = MessageStore(server.engine)
    if args.hl7_command == "stats":
        out: dict[str, object] = {"counts": store.counts()}
        warned, latest = store.warnings()
        if warned:  # processed, but worth an operator's look (a control id reused for another message)
            out["warnings"] = warned
            out["latestWarnings"] = [{"pk": r.pk, "sender": r.sender, "controlId": r.control_id,
                                      "type": r.message_type, "received": r.received_at.isoformat(),
                                      "warning": r.error} for r in latest]
        if getattr(args, "errors", 0):
            out["errors"] = [{"pk": r.pk, "sender": r.sender, "controlId": r.control_id, "type": r.message_type,
                              "received": r.received_at.isoformat(), "error": r.error}
                             for r in store.recent(("error", "rejected"), args.errors)]
        print(json.dumps(out, sort_keys=True))
        return 0
    if args.hl7_command == "load":
        from interfaces.mllp.batch import load_file

        pipeline = Hl7Pipeline(server, store)
        failed = False
        for path in args.files:
            loaded = load_file(pipeline, path.read_bytes())
            codes = loaded["outcomes"]
            assert isinstance(codes, dict)
            failed = failed or bool(loaded.get("notProcessed")) or any(c not in ("AA", "CA", "none") for c in codes)
            print(json.dumps({"file": str(path), **loaded}, sort_keys=True))
        return 1 if failed else 0
    if args.hl7_command == "replay":
        outcome = Hl7Pipeline(server, store).replay(args.status, args.limit)
        print(json.dumps(outcome, sort_keys=True))
        return 1 if outcome.get("error") else 0
    print(f"unknown hl7 command {args.hl7_command}", file=sys.stderr)
    return 2


def serve_mllp(settings: Settings, port: int | None, *, reuse_port: bool = False) -> None:
    """One listener process until interrupted (``reuse_port``: one of several on the same port)."""
    from fhir_server.rest.server import FhirServer
    from interfaces.mllp.listener import MllpListener
    from interfaces.mllp.routing import every_tenant

    server = FhirServer(settings)

    async def main() -> None:
        # Every hospital, routed by MSH-6 (fhir-server --tenant T mllp: T's alone, e.g. on a port of its own)
        listener = MllpListener(server, port=port, reuse_port=reuse_port, tenants=every_tenant(settings, server))
        # SIGTERM (docker stop, systemd) and SIGINT stop it cleanly, also where SIGINT arrives ignored: a
        # process started in the background by a shell without job control inherits SIG_IGN for it.
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        serving = asyncio.ensure_future(listener.serve_forever())
        try:
            await asyncio.wait([serving, asyncio.ensure_future(stopping.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await listener.stop()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
    finally:
        if server.audit is not None:  # write the AuditEvents still queued; its writer thread ends with it
            server.audit.recorder.close()


def routes_command(settings: Settings, args: argparse.Namespace) -> int:
    """``fhir-server hl7 routes add|list|remove``: which hospital takes a receiving facility's messages."""
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade
    from interfaces.mllp.routing import RouteTable

    if settings.tenant != "default":
        print("hl7 routes: the platform's table; run it without --tenant", file=sys.stderr)
        return 2
    engine = make_engine(settings)
    upgrade(engine)
    table = RouteTable(engine)
    if args.routes_action == "add":
        route = table.add(args.tenant_code, args.facility, args.application or "")
        print(f"MSH-6 {route.facility}{' MSH-5 ' + route.application if route.application else ''} -> {route.tenant}")
    elif args.routes_action == "remove":
        if not table.remove(args.facility, args.application or ""):
            print(f"hl7 routes: no route for {args.facility}", file=sys.stderr)
            return 1
    else:
        for r in table.list():
            print(f"{r.facility}\t{r.application or '*'}\t{r.tenant}")
    return 0

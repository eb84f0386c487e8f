"""``fhir-server worker`` and ``fhir-server outbox list|retry|discard``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fhir_server.config import Settings
from fhir_server.jobs.outbox_admin import STATUSES


def add_parsers(sub: Any) -> None:
    worker = sub.add_parser("worker", help="run a celery worker (needs FHIR_BROKER_URL): outbox, bulk data")
    worker.add_argument("--concurrency", type=int, default=None, help="threads (default FHIR_WORKER_CONCURRENCY)")
    outbox = sub.add_parser("outbox", help="outbox rows: list, retry, discard")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    listing = outbox_sub.add_parser("list", help="counts by status and the newest rows, as JSON")
    listing.add_argument("--status", choices=STATUSES, default=None)
    listing.add_argument("--limit", type=int, default=50)
    retry = outbox_sub.add_parser("retry", help="make a row (or every dead row) due again with fresh attempts")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=int, default=None)
    which.add_argument("--dead", action="store_true")
    discard = outbox_sub.add_parser("discard", help="give up on a dead row (or every dead row): kept, marked done")
    gone = discard.add_mutually_exclusive_group(required=True)
    gone.add_argument("id", nargs="?", type=int, default=None)
    gone.add_argument("--dead", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        if not settings.broker_url:
            print("fhir-server worker needs FHIR_BROKER_URL (redis://... or amqp://...); without one, "
                  "`fhir-server serve` runs jobs itself")
            return 2
        from fhir_server.jobs.celery_app import run_worker

        run_worker(settings, args.concurrency)
        return 0
    from fhir_server.jobs import outbox_admin
    from fhir_server.storage.database import make_engine

    engine = make_engine(settings)
    if args.outbox_command == "list":
        print(json.dumps(outbox_admin.list_rows(engine, args.status, args.limit), indent=2))
        return 0
    if args.outbox_command == "discard":
        count = outbox_admin.discard(engine, args.id, dead=args.dead)
        print(json.dumps({"discarded": count}))
        return 0 if count or args.dead else 1
    count = outbox_admin.retry(engine, args.id, dead=args.dead)
    print(json.dumps({"retried": count}))
    return 0 if count or args.dead else 1

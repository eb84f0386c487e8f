"""``fhir-server seed-demo``: a demo hospital written through the server's own rules (issue 18, item 10; seed.py)
and a sign-in user for each role, printed once."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fhir_server.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from fhir_server.workflows.demo.seed import Hospital

# role -> what the demo user does (the doctor signs in as the first demo doctor)
ROLES = ("admin", "manager", "doctor", "nurse", "receptionist", "lab_technician", "pharmacist", "billing_officer")
RUN_AUDIT = ("seed-demo", "Demo hospital written by fhir-server seed-demo")


@dataclass
class Demo:
    hospital: Hospital
    users: list[tuple[str, str, str | None]] = field(default_factory=list)  # (role, name, password or None)
    refused: dict[str, str] = field(default_factory=dict)  # role -> why its user was not created


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("seed-demo", help="write a demo hospital (departments, wards, 20 doctors, patients and "
                                              "their visits, labs, medicines, stays, bills) and demo users")
    parser.add_argument("--seed", type=int, default=1, help="the same seed writes the same hospital (default 1)")
    parser.add_argument("--patients", type=int, default=500, help="how many patients (default 500)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes writing the patients (default: 2 on PostgreSQL, or the CPUs if fewer; "
                             "always 1 on SQLite, whose one writer at a time would queue them anyway)")


def worker_count(engine: Engine, asked: int | None) -> int:
    """How many processes write the patients: SQLite has one writer at a time, so one."""
    if engine.dialect.name == "sqlite":
        return 1
    return max(1, asked if asked is not None else min(2, os.cpu_count() or 1))


def write_demo(settings: Settings, engine: Engine, *, seed: int, patients: int, workers: int | None = None) -> Demo:
    """The hospital, its run's AuditEvent, fresh planner statistics and the demo users (the bench runs this).
    ``workers``: processes writing the patients (``worker_count``)."""
    from fhir_server.audit.codes import own
    from fhir_server.audit.events import SERVER, Record
    from fhir_server.audit.recorder import AuditRecorder
    from fhir_server.auth.store import AuthStore
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.statistics import analyze
    from fhir_server.workflows.demo.seed import seed as write_hospital

    # Every rule on; the seed's thousands of writes are NOT audited transaction by transaction: one AuditEvent
    # below records the run as a whole (a bulk load by the operator's command, like `fhir-server load`).
    seeding = settings.model_copy(update={"workflows": "all", "outbox_dispatcher": False, "audit_enabled": False})
    server = FhirServer(seeding, engine)
    hospital = write_hospital(server, seed=seed, patients=patients, workers=worker_count(engine, workers))
    if settings.audit_enabled:  # the run: the server's own work at the operator's command, naming the hospital
        AuditRecorder(server.uow, background=False).record(Record(
            own(*RUN_AUDIT), "C", 201, SERVER, targets=[f"Organization/{hospital.org}"]))
    analyze(engine)  # the tables were just filled: plans for the first searches need their statistics
    demo = Demo(hospital)
    store = AuthStore(engine)
    for role in ROLES:  # each password hashed once (argon2), as any user's
        name = f"demo-{role.replace('_', '-')}-{seed}"
        password = f"Demo-{secrets.token_urlsafe(9)}-7a"
        fhir_user = f"Practitioner/{hospital.doctors[0]}" if role == "doctor" else None
        try:
            store.create_user(name, password, role, fhir_user)
        except Exception as exc:  # e.g. the name is taken (an earlier seed): say so, go on
            demo.refused[role] = str(exc)
            demo.users.append((role, name, None))
            continue
        demo.users.append((role, name, password))
    return demo


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade
    from fhir_server.workflows.demo.calls import SeedError

    if args.patients < 1:
        print("--patients must be at least 1", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    engine = make_engine(settings)
    upgrade(engine)
    try:
        demo = write_demo(settings, engine, seed=args.seed, patients=args.patients, workers=args.workers)
    except SeedError as exc:
        print(f"seed-demo stopped: {exc}", file=sys.stderr)
        return 1
    print("Demo hospital written: " + ", ".join(f"{v} {k}" for k, v in demo.hospital.counts.items()))
    print("Sign-in users (the passwords are shown only now):")
    for role, name, password in demo.users:
        if password is None:
            print(f"  {role:16} {name}: not created ({demo.refused[role]})")
        else:
            print(f"  {role:16} {name:32} {password}")
    return 0

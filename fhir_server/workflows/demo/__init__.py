"""``fhir-server seed-demo``: a demo hospital written through the server's own rules (issue 18, item 10; seed.py)
and a sign-in user for each role, printed once."""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any

from fhir_server.config import Settings

# role -> what the demo user does (the doctor signs in as the first demo doctor)
ROLES = ("admin", "manager", "doctor", "nurse", "receptionist", "lab_technician", "pharmacist", "billing_officer")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("seed-demo", help="write a demo hospital (departments, wards, 20 doctors, patients and "
                                              "their visits, labs, medicines, stays, bills) and demo users")
    parser.add_argument("--seed", type=int, default=1, help="the same seed writes the same hospital (default 1)")
    parser.add_argument("--patients", type=int, default=500, help="how many patients (default 500)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fhir_server.auth.store import AuthStore
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade
    from fhir_server.workflows.demo.calls import SeedError
    from fhir_server.workflows.demo.seed import seed

    if args.patients < 1:
        print("--patients must be at least 1", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"workflows": "all", "outbox_dispatcher": False})
    engine = make_engine(settings)
    upgrade(engine)
    try:
        hospital = seed(FhirServer(settings, engine), seed=args.seed, patients=args.patients)
    except SeedError as exc:
        print(f"seed-demo stopped: {exc}", file=sys.stderr)
        return 1
    print("Demo hospital written: " + ", ".join(f"{v} {k}" for k, v in hospital.counts.items()))
    store = AuthStore(engine)
    print("Sign-in users (the passwords are shown only now):")
    for role in ROLES:
        name = f"demo-{role.replace('_', '-')}-{args.seed}"
        password = f"Demo-{secrets.token_urlsafe(9)}-7a"
        fhir_user = f"Practitioner/{hospital.doctors[0]}" if role == "doctor" else None
        try:
            store.create_user(name, password, role, fhir_user)
        except Exception as exc:  # e.g. the name is taken (an earlier seed): say so, go on
            print(f"  {role:16} {name}: not created ({exc})")
            continue
        print(f"  {role:16} {name:32} {password}")
    return 0

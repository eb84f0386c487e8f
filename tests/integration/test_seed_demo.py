"""``fhir-server seed-demo`` (issue 18 item 10) as an operator runs it, on SQLite and PostgreSQL: a real process
writes a small demo hospital through the server's rules; its printed users sign in; the data holds together
(beds, orders, dispenses, invoices, payments, claims) and the dashboard's reports count it; the same seed writes
the same hospital, with one worker process or two; a refusal in any worker stops the run; a second run on the
same database is refused."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from fhir_server.rest.server import FhirServer
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade
from fhir_server.storage.models import ResourceRow
from fhir_server.workflows.demo.calls import SeedError
from fhir_server.workflows.demo.seed import Group, Seeder
from fhir_server.workflows.demo.seed import seed as write_hospital
from fhir_server.workflows.laboratory.turnaround import TURNAROUND as TURNAROUND_URL
from tests.conftest import PROCESS_START_TIMEOUT, Backend, wait_until
from tests.integration.test_auth_access import REDIRECT
from tests.integration.test_auth_support import Smart, code_from, exchange, pkce, smart_server
from tests.integration.test_auth_support import authorize as sign_in

CLI = [sys.executable, "-m", "fhir_server.cli"]
PATIENTS = 8
ENV = {"FHIR_SCHEDULING_HORIZON_DAYS": "4", "FHIR_OUTBOX_DISPATCHER": "false"}


def seed_demo(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV, "FHIR_DATABASE_URL": database_url}
    return subprocess.run([*CLI, "seed-demo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def seeded(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Smart, dict[str, Any]]]:
    backend.truncate()
    out = seed_demo(backend.settings.database_url, tmp_path_factory.mktemp("seed"), "--patients", str(PATIENTS),
                    "--seed", "7")
    assert out.returncode == 0, out.stderr[-3000:]
    users = {m[0]: (m[1], m[2]) for m in re.findall(r"^  (\w+) +(demo-\S+) +(\S+)$", out.stdout, re.M)}
    counts = {k: int(v) for v, k in re.findall(r"(\d+) ([a-z ]+?)(?:,|$)", out.stdout.splitlines()[0])}
    for smart in smart_server(backend, workflows="all"):
        yield smart, {"users": users, "counts": counts, "stdout": out.stdout}


def _token(smart: Smart, username: str, password: str) -> str:
    client = smart.client(["authorization_code"], "openid fhirUser user/*.cruds", redirect_uris=[REDIRECT],
                          public=True)
    verifier, challenge = pkce()
    code = code_from(sign_in(smart, client["client_id"], REDIRECT, "openid fhirUser user/*.cruds", username,
                             password=password, challenge=challenge), REDIRECT)
    r = exchange(smart, client["client_id"], code, REDIRECT, verifier)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _all(smart: Smart, token: str, query: str) -> list[dict[str, Any]]:
    r = smart.fhir("GET", f"{query}{'&' if '?' in query else '?'}_count=1000", token)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry") or [] if e.get("search", {}).get("mode") == "match"]


def test_the_printed_users_sign_in_with_their_roles(seeded: tuple[Smart, dict[str, Any]]) -> None:
    smart, world = seeded
    assert set(world["users"]) == {"admin", "manager", "doctor", "nurse", "receptionist", "lab_technician",
                                   "pharmacist", "billing_officer"}
    nurse = _token(smart, *world["users"]["nurse"])
    assert smart.fhir("GET", "Patient?_count=1", nurse).status_code == 200
    desk = _token(smart, *world["users"]["receptionist"])
    assert smart.fhir("GET", "Observation?_count=1", desk).status_code == 403  # the role still holds
    assert world["counts"]["patients"] == PATIENTS and world["counts"]["practitioners"] == 20


def test_the_demo_hospital_holds_together(seeded: tuple[Smart, dict[str, Any]]) -> None:
    smart, world = seeded
    admin = smart.system_token("system/*.rs")
    counts = world["counts"]
    assert len(_all(smart, admin, "Patient")) == PATIENTS
    assert len(_all(smart, admin, "PractitionerRole")) == 20 and _all(smart, admin, "Slot?status=busy")
    # beds: occupied exactly while an inpatient stay holds them
    stays = _all(smart, admin, "Encounter?class=IMP")
    held = {loc["location"]["reference"] for e in stays if e["status"] == "in-progress"
            for loc in e["location"] if loc.get("status") == "active"}
    beds = [b for b in _all(smart, admin, "Location")
            if (b.get("physicalType") or {}).get("coding", [{}])[0].get("code") == "bd"]
    occupied = {f"Location/{b['id']}" for b in beds if b.get("operationalStatus", {}).get("code") == "O"}
    assert held and occupied == held
    assert len(stays) == counts["admissions"]
    # every order collected, reported, completed with its turnaround; every prescription dispensed from stock
    orders = _all(smart, admin, "ServiceRequest")
    assert len(orders) == counts["lab orders"] > 0
    assert all(o["status"] == "completed" and any(x["url"] == TURNAROUND_URL for x in o["extension"]) for o in orders)
    dispenses = _all(smart, admin, "MedicationDispense")
    assert len(dispenses) == counts["prescriptions"]
    assert all(any("dispensed-batch" in x["url"] for x in d["extension"]) for d in dispenses)
    # invoices: balanced exactly when paid in full; the insured patients' invoices have their claims
    invoices = _all(smart, admin, "Invoice")
    payments = _all(smart, admin, "PaymentReconciliation")
    paid: dict[str, float] = {}
    for p in payments:
        ref = p["detail"][0]["request"]["reference"]
        paid[ref] = paid.get(ref, 0) + p["paymentAmount"]["value"]
    for inv in invoices:
        full = abs(paid.get(f"Invoice/{inv['id']}", 0) - inv["totalGross"]["value"]) < 0.005
        assert inv["status"] == ("balanced" if full else "issued"), inv["id"]
    insured = {c["beneficiary"]["reference"] for c in _all(smart, admin, "Coverage")}
    claims = _all(smart, admin, "Claim")
    assert len(claims) == sum(1 for inv in invoices if inv["subject"]["reference"] in insured)


def test_the_run_is_audited_once_not_per_write(seeded: tuple[Smart, dict[str, Any]]) -> None:
    """The seed's writes are not audited one transaction at a time; one AuditEvent records the run."""
    smart, _world = seeded
    events = _all(smart, smart.system_token("system/*.rs"), "AuditEvent")
    assert [e["subtype"][0]["code"] for e in events] == ["seed-demo"], [e["subtype"] for e in events]
    assert events[0]["action"] == "C" and events[0]["entity"][0]["what"]["reference"].startswith("Organization/")


def test_the_reports_count_the_demo(seeded: tuple[Smart, dict[str, Any]]) -> None:
    smart, world = seeded
    manager = _token(smart, *world["users"]["manager"])

    def figure(measure: str, code: str) -> dict[str, Any]:
        r = smart.fhir("GET", f"Measure/$evaluate-measure?measure={measure}&periodStart=2025-01-01"
                              f"&periodEnd=2029-12-31", manager)
        assert r.status_code == 200, r.text
        return next(g for g in r.json()["group"] if g["code"]["coding"][0]["code"] == code)

    counts = world["counts"]
    assert figure("appointments", "appointments")["population"][0]["count"] == counts["appointments"]
    assert figure("revenue", "revenue")["population"][0]["count"] == counts["invoices"]
    assert figure("lab-turnaround", "lab-volume")["population"][0]["count"] == counts["lab orders"]
    assert figure("patient-demographics", "patients")["population"][0]["count"] == PATIENTS
    stock = figure("pharmacy-stock", "stock-value")
    assert stock["population"][0]["count"] == 15000 - 10 * counts["dispenses"]


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INSTANT = re.compile(r"^\d{4}-\d\d-\d\dT\d")
NAMED = ("Patient", "Practitioner", "Location", "Organization", "Medication")


def _facts(engine: Engine) -> Counter[str]:
    """Every resource the demo holds, as it reads without the server's ids and clocks: a reference names what
    it points to (a patient by name and birth date, a bed by its name, a dispense by its patient), so an MRN,
    a queue token or a stock balance given to another patient shows; instants are left out, except the
    booked times of appointments."""
    with engine.connect() as conn:
        rows = [(t, i, c or {}) for t, i, c in conn.execute(select(
            ResourceRow.resource_type, ResourceRow.id, ResourceRow.content).where(ResourceRow.deleted.is_(False)))]
    named = {i: f"{t}:{orjson.dumps([c.get('name'), c.get('birthDate'), c.get('batch')]).decode()}"
             for t, i, c in rows if t in NAMED}
    label = dict(named)
    for t, i, c in rows:
        if i not in named:  # by what it is about, among the named ones (whatever order the rows come in)
            refs = [c[k] for k in ("subject", "patient", "beneficiary") if isinstance(c.get(k), dict)]
            refs += [a for a in c.get("actor") or [] if isinstance(a, dict)]  # a Schedule: its doctor
            found = [m.group(0) for r in refs if (m := UUID.search(str(r.get("reference"))))]
            label[i] = f"{t}<{','.join(sorted(named[f] for f in found if f in named))}>"

    def canon(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: canon(v) for k, v in value.items()}
        if isinstance(value, list):
            return [canon(v) for v in value]
        if isinstance(value, str):
            return "<instant>" if INSTANT.match(value) else UUID.sub(lambda m: label.get(m.group(0), "?"), value)
        return value

    facts: Counter[str] = Counter()
    for t, _i, c in rows:
        if t == "Slot":  # generated from the clock's now to now + the horizon (the booked ones: appointments)
            continue
        fact = {k: canon(v) for k, v in c.items() if k not in ("id", "meta", "text")}
        if t == "Appointment":
            fact.update(start=c.get("start"), end=c.get("end"))
        facts[orjson.dumps(fact, option=orjson.OPT_SORT_KEYS).decode()] += 1
    return facts


def _seed_sqlite(backend: Backend, db: Path, seed: int, not_before: datetime) -> Counter[str]:
    """The hospital (no users) in-process into a fresh SQLite file: the rules, registries and caches already
    loaded in this process serve both runs, so the comparison costs the writes, not two process starts."""
    settings = backend.settings.model_copy(update={"database_url": f"sqlite:///{db}", "workflows": "all",
                                                   "scheduling_horizon_days": 4})
    engine = make_engine(settings)
    try:
        upgrade(engine)
        demo = write_hospital(FhirServer(settings, engine), seed=seed, patients=4, workers=2, group=2,
                              not_before=not_before)
        assert demo.workers == 1
        return _facts(engine)
    finally:
        engine.dispose()


def test_the_same_seed_writes_the_same_hospital_once(backend: Backend, seeded: tuple[Smart, dict[str, Any]],
                                                     tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="already holds the demo hospital"):  # the command exits 1 with it
        write_hospital(FhirServer(backend.settings.model_copy(update={"workflows": "all"}), backend.engine),
                       seed=7, patients=2)
    if backend.name != "sqlite":
        return  # fresh SQLite files; the refusal above is the PostgreSQL case (and workers: below)
    not_before = datetime.now(UTC) + timedelta(hours=1)
    facts = [_seed_sqlite(backend, tmp_path / f"demo{n}.sqlite3", seed, not_before)
             for n, seed in ((1, 11), (2, 11), (3, 12))]
    assert facts[0] == facts[1] != facts[2]  # the same seed, the same hospital; another seed, another


def _after_the_worker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """This process starts its first group only once the worker has taken the second, so that two processes
    write at once whatever their start-up times (only this process is patched: the worker runs its own code).
    The groups this process wrote, as it goes."""
    run_group, mine = Seeder.run_group, []

    def after_the_worker(self: Seeder, group: Group) -> dict[str, int]:
        if group.index == 0:
            taken = self.turns.next  # type: ignore[attr-defined]  # SharedTurns (parallel.py)
            wait_until(lambda: taken.value >= 2, PROCESS_START_TIMEOUT, "the worker to take the second group")
        mine.append(group.index)
        return run_group(self, group)

    monkeypatch.setattr(Seeder, "run_group", after_the_worker)
    return mine


def _seed_postgres(backend: Backend, workers: int, not_before: datetime) -> tuple[dict[str, int], Counter[str]]:
    """8 patients in 4 groups of 2 (the command's groups are 25) into the emptied database."""
    backend.truncate()
    settings = backend.settings.model_copy(update={"workflows": "all", "scheduling_horizon_days": 4})
    hospital = write_hospital(FhirServer(settings, backend.engine), seed=5, patients=8, workers=workers, group=2,
                              not_before=not_before)
    assert hospital.workers == workers
    return {k: v for k, v in hospital.counts.items() if k != "seconds"}, _facts(backend.engine)


def test_two_workers_write_the_same_hospital_as_one(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The groups are shared by two processes as they come, yet every slot, bed, MRN, queue token and stock
    balance goes to the same patient as when one process writes them in order."""
    if backend.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: seed-demo writes with one process there")
    not_before = datetime.now(UTC) + timedelta(hours=1)  # the same slots for both, whatever the clock did between
    one = _seed_postgres(backend, 1, not_before)
    mine = _after_the_worker(monkeypatch)
    two = _seed_postgres(backend, 2, not_before)
    assert 0 in mine and 1 not in mine  # the worker wrote the second group (at least), beside this process
    assert multiprocessing.active_children() == []  # the worker ended with the run
    assert one[0] == two[0] and one[0]["patients"] == 8 and one[0]["admissions"] > 0
    assert sum(one[1].values()) > 200 and one[1] == two[1], (one[1] - two[1], two[1] - one[1])


def test_a_refused_write_in_a_worker_stops_the_run(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second of three groups books a slot that does not exist, and is left to the worker (this process
    starts its first group once the worker has taken the second): the worker's refusal stops the run with the
    server's answer, this process included, and no process is left behind."""
    if backend.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: seed-demo writes with one process there")
    plan = Seeder.plan

    def broken(self: Seeder, total: int, size: int = 25, not_before: datetime | None = None) -> list[Group]:
        return [Group(g.index, g.first, g.n, (("no-such-slot", 0),), g.beds) if g.index == 1 else g
                for g in plan(self, total, size, not_before)]

    monkeypatch.setattr(Seeder, "plan", broken)  # made in this process, handed to the worker
    _after_the_worker(monkeypatch)
    backend.truncate()
    settings = backend.settings.model_copy(update={"workflows": "all", "scheduling_horizon_days": 4})
    with pytest.raises(SeedError, match=r"^worker 1: POST .*no-such-slot"):
        write_hospital(FhirServer(settings, backend.engine), seed=5, patients=6, workers=2, group=2)
    assert multiprocessing.active_children() == []

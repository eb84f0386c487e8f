"""``fhir-server seed-demo`` (issue 18, item 10): a demo hospital written through the server's own write path with
every workflow on, each step as the role that does it: the administrator sets up departments, wards and beds,
20 doctors' hours (their slots follow), the price list and the pharmacy's stock; then, per group of patients,
the receptionist registers and books them, checks them in or marks no-shows; the nurse takes vital signs and
admits some to a bed (a transfer, then the discharge after the doctor's signed summary); the doctor orders a
blood count and prescribes; the lab collects, reports (a few critical values); the pharmacist dispenses; the
billing officer charges, invoices, takes payments, and the insured patients' claims follow. Deterministic for a
seed whatever the number of worker processes (parallel.py): each group draws from its own ``random.Random``
and takes its slots and beds from a plan made before any group runs; the steps whose outcome depends on the
order of writers (server-side numbers: MRNs, queue tokens, the stock ledger's balances) take their turn in group
order (``Turns``). Ids and time stamps are the server's."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.workflows.demo.calls import Caller, SeedError, urn, user
from fhir_server.workflows.demo.parallel import InOrder, Turns, write_in_parallel

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

DATA = json.loads(Path(__file__).with_name("hospital.json").read_text())
PRICELIST = Path(__file__).parents[1] / "billing" / "pricelist.json"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PHYSICAL = "http://terminology.hl7.org/CodeSystem/location-physical-type"
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
BARCODE = "https://fhir-server.dev/demo/specimen-barcode"
GROUP = 25  # patients written per transaction
ROOMS, BEDS = 3, 5  # per ward: 3 beds for each group of 500 patients (Group.beds)


@dataclass
class Hospital:
    org: str = ""
    insurer: str = ""
    departments: list[str] = field(default_factory=list)
    doctors: list[str] = field(default_factory=list)  # Practitioner ids
    beds: list[str] = field(default_factory=list)
    store: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    workers: int = 1  # processes that wrote the patients
    waited: float = 0.0  # seconds they spent waiting for their turn at the ordered steps (parallel.py)


@dataclass(frozen=True)
class Group:
    """One group of patients and what it takes from the hospital's shared pools, fixed before any group runs
    (so that neither timing nor the number of workers changes who gets which slot or bed)."""
    index: int
    first: int  # its first patient's number
    n: int
    slots: tuple[tuple[str, int], ...]  # (Slot id, index of the slot's doctor), one per patient while they last
    beds: tuple[str, ...]  # the bed that stays taken, then the two of a stay with a transfer (or fewer: none left)


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def _kind(code: str) -> dict[str, Any]:
    return {"coding": [{"system": PHYSICAL, "code": code}]}


def _quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


class Seeder:
    def __init__(self, server: FhirServer, seed: int, hospital: Hospital | None = None) -> None:
        self.calls = Caller(server)
        self.seed = seed
        self.rng = random.Random(seed)
        self.h = hospital or Hospital()
        self.counts = self.h.counts  # what the step being written adds to (a group's own, in run_group)
        self.turns: Turns = InOrder()
        self.admin = user("admin")
        self.desk = user("receptionist")
        self.nurse = user("nurse")
        self.lab = user("lab_technician")
        self.pharmacist = user("pharmacist")
        self.officer = user("billing_officer")

    def _urn(self) -> str:
        return urn(self.rng.getrandbits(128))

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    # --- the hospital ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        """The hospital's structure in two transactions (entries refer to each other by urn:uuid)."""
        c, admin = self.calls, self.admin
        c.call(admin, "POST", "", json.loads(PRICELIST.read_text()))
        entries: list[tuple[str, str, dict[str, Any] | None, str | None]] = []

        def add(resource: dict[str, Any]) -> dict[str, str]:
            full = self._urn()
            entries.append(("POST", resource["resourceType"], resource, full))
            return {"reference": full}

        org = add({"resourceType": "Organization", "name": DATA["hospital"],
                   "identifier": [{"system": DATA["marker"], "value": "1"}]})
        add({"resourceType": "Organization", "name": DATA["insurer"]})
        dept = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "dept"}]}
        departments = [add({"resourceType": "Organization", "name": name, "type": [dept], "partOf": org})
                       for name in DATA["departments"]]
        for w, name in enumerate(DATA["wards"]):
            ward = add({"resourceType": "Location", "name": name, "physicalType": _kind("wa"),
                        "managingOrganization": departments[w]})
            for r in range(ROOMS):
                room = add({"resourceType": "Location", "name": f"{name} room {r + 1}", "physicalType": _kind("ro"),
                            "partOf": ward})
                for b in range(BEDS):
                    add({"resourceType": "Location", "name": f"{name} {r + 1}{'ABCDE'[b]}", "physicalType": _kind("bd"),
                         "partOf": room,
                         "operationalStatus": {"system": "http://terminology.hl7.org/CodeSystem/v2-0116", "code": "U"}})
        add({"resourceType": "Location", "name": "Main pharmacy", "managingOrganization": org})
        made = c.transaction(admin, entries)
        orgs = [r["id"] for r in made if r["resourceType"] == "Organization"]
        self.h.org, self.h.insurer, self.h.departments = orgs[0], orgs[1], orgs[2:]
        places = [r for r in made if r["resourceType"] == "Location"]
        self.h.beds = [r["id"] for r in places
                       if (r.get("physicalType") or {}).get("coding", [{}])[0].get("code") == "bd"]
        self.h.store = places[-1]["id"]
        entries = []
        for i in range(20):
            given, family = DATA["doctors"][i]
            doctor = add({"resourceType": "Practitioner",
                          "name": [{"prefix": ["Dr."], "given": [given], "family": family}]})
            add({"resourceType": "PractitionerRole", "active": True, "practitioner": doctor,
                 "organization": _ref("Organization", self.h.departments[i % len(self.h.departments)]),
                 "availableTime": [{"daysOfWeek": ["mon", "tue", "wed", "thu", "fri", "sat"],
                                    "availableStartTime": ("09:00:00", "14:00:00")[i % 2],
                                    "availableEndTime": ("13:00:00", "18:00:00")[i % 2]}]})
        made = c.transaction(admin, entries)
        self.h.doctors = [r["id"] for r in made if r["resourceType"] == "Practitioner"]
        self._count("practitioners", 20)
        # The pharmacy receives two batches of the demo medicine.
        medicine = DATA["medicine"]
        today = datetime.now(UTC).date()
        for lot, days, units in (("DEMO-A", 60, 5000), ("DEMO-B", 540, 10000)):
            batch = c.call(self.pharmacist, "POST", "Medication", {
                "resourceType": "Medication", "code": medicine,
                "batch": {"lotNumber": lot, "expirationDate": (today + timedelta(days=days)).isoformat()}})["id"]
            c.call(self.pharmacist, "POST", "SupplyDelivery", {
                "resourceType": "SupplyDelivery", "status": "completed", "destination": _ref("Location", self.h.store),
                "suppliedItem": {"itemReference": _ref("Medication", batch), "quantity": {"value": units}}})

    # --- the patients ---------------------------------------------------------------------------------------

    def plan(self, total: int, size: int = GROUP, not_before: datetime | None = None) -> list[Group]:
        """The groups of ``size`` patients, each with its own slots (the earliest free ones from ``not_before``,
        default an hour from now, in the order of the doctors' creation at equal times, shuffled by the seed) and
        beds (3 a group while they last)."""
        doctor = {f"Practitioner/{pid}": i for i, pid in enumerate(self.h.doctors)}
        schedules = {s["id"]: next(doctor[a["reference"]] for a in s["actor"] if a["reference"] in doctor)
                     for s in self.calls.search(self.admin, "Schedule", [])}
        found = self.calls.search(self.admin, "Slot", [("status", "free")], every=True)  # sorted here: by doctor
        # not the next hour's: a slot must still lie ahead when its group books it, minutes later
        soon = not_before or datetime.now(UTC) + timedelta(hours=1)
        slots = sorted((start, schedules[s["schedule"]["reference"].split("/")[1]], s["id"]) for s in found
                       if (start := datetime.fromisoformat(s["start"])) >= soon)
        picked = [(sid, d) for _, d, sid in slots[:total]]
        self.rng.shuffle(picked)
        return [Group(g, first, min(size, total - first), tuple(picked[first:first + size]),
                      tuple(self.h.beds[3 * g:3 * g + 3]))
                for g, first in enumerate(range(0, total, size))]

    def run_group(self, group: Group) -> dict[str, int]:
        """Write one group; its counts. Its choices come from its own generator: the same seed gives the same
        group whatever was written before or beside it."""
        self.rng = random.Random(f"{self.seed}-{group.first}")
        self.counts = {}
        self._group(group)
        return self.counts

    def _group(self, group: Group) -> None:
        c, rng = self.calls, self.rng
        people = []
        for i in range(group.first, group.first + group.n):
            given = rng.choice(DATA["given"])
            families, suffixes = DATA["family"], DATA["suffix"]
            family = families[i % len(families)] + suffixes[(i // len(families)) % len(suffixes)]
            born = datetime(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 80))
            people.append({"resourceType": "Patient", "name": [{"given": [given], "family": family}],
                           "gender": rng.choice(["female", "male"]), "birthDate": born.date().isoformat(),
                           "managingOrganization": _ref("Organization", self.h.org),
                           "telecom": [{"system": "phone", "use": "mobile", "value": f"+91-98{i:08d}"}]})
        with self.turns.turn("register", group.index):  # the MRNs: the day's numbers in registration order
            made = c.transaction(self.desk, [("POST", "Patient", p, None) for p in people])
        pids = [p["id"] for p in made]
        self._count("patients", group.n)
        insured = [pid for pid in pids if rng.random() < 0.4]
        c.transaction(self.desk, [("POST", "Coverage", {
            "resourceType": "Coverage", "status": "active", "beneficiary": _ref("Patient", pid),
            "payor": [_ref("Organization", self.h.insurer)],
            "period": {"start": (datetime.now(UTC) - timedelta(days=365)).date().isoformat()}}, None)
            for pid in insured])
        # The receptionist books each its slot; most come (check-in), some do not, a few cancel. The bookings go
        # in the order of the slots' doctors: a booking locks its doctor until the commit, and two groups booking
        # at once then lock the doctors they share in one order (no deadlock).
        booked = sorted(zip(group.slots, pids, strict=False), key=lambda b: b[0][1])
        appts = c.transaction(self.desk, [("POST", "Appointment", {
            "resourceType": "Appointment", "status": "booked", "slot": [_ref("Slot", sid)],
            "participant": [{"actor": _ref("Patient", pid), "status": "accepted"}]}, None) for (sid, _), pid in booked])
        self._count("appointments", len(appts))
        fates = [rng.choices(["arrived", "noshow", "cancelled", "booked"], [70, 10, 5, 15])[0] for _ in appts]
        moves = []
        for appt, fate in zip(appts, fates, strict=True):
            if fate == "booked":
                continue
            changed = {**appt, "status": fate}
            if fate == "cancelled":
                changed["cancelationReason"] = {"text": "patient asked"}
            moves.append(("PUT", f"Appointment/{appt['id']}", changed, None))
        with self.turns.turn("check-in", group.index):  # the doctors' queue tokens, in check-in order
            c.transaction(self.desk, moves)
        came = [(appt, pid) for appt, fate, (_, pid) in zip(appts, fates, booked, strict=True) if fate == "arrived"]
        if not came:
            return
        encounters = {e["appointment"][0]["reference"].split("/")[1]: e for e in c.search(
            self.desk, "Encounter", [("appointment", ",".join(f"Appointment/{a['id']}" for a, _ in came))])}
        self._visits(came, encounters, group)

    def _visits(self, came: list[tuple[dict[str, Any], str]], encounters: dict[str, dict[str, Any]],
                group: Group) -> None:
        c, rng = self.calls, self.rng
        doctor_id = rng.choice(self.h.doctors)
        doctor = user("doctor", f"Practitioner/{doctor_id}")
        now = datetime.now(UTC)
        # The nurse's vital signs, in the encounter.
        vitals = []
        for appt, pid in came:
            enc = encounters[appt["id"]]["id"]
            for code, display, value, unit in (("8867-4", "Heart rate", rng.randint(58, 110), "/min"),
                                               ("29463-7", "Body weight", rng.randint(40, 95), "kg")):
                vitals.append(("POST", "Observation", {
                    "resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                    "subject": _ref("Patient", pid), "encounter": _ref("Encounter", enc),
                    "effectiveDateTime": now.isoformat(), "valueQuantity": _quantity(value, unit)}, None))
        c.transaction(self.nurse, vitals)
        self._count("vital signs", len(vitals))
        # The doctor sees them: the visit finished, a blood count ordered, paracetamol prescribed.
        entries: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        orders: list[tuple[str, str, str]] = []  # (order urn, patient, encounter)
        for appt, pid in came:
            enc = dict(encounters[appt["id"]])
            enc.update(status="finished", participant=[{"individual": _ref("Practitioner", doctor_id)}],
                       serviceProvider=_ref("Organization", self.h.departments[0]),
                       period={"start": (enc.get("period") or {}).get("start") or now.isoformat(),
                               "end": now.isoformat()})
            entries.append(("PUT", f"Encounter/{enc['id']}", enc, None))
            order = self._urn()
            orders.append((order, pid, enc["id"]))
            entries.append(("POST", "ServiceRequest", {
                "resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "priority": rng.choice(["routine", "routine", "urgent", "stat"]),
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
                "code": {"coding": [{"system": LOINC, "code": "58410-2", "display": "CBC panel"}]},
                "subject": _ref("Patient", pid), "encounter": _ref("Encounter", enc["id"]),
                "requester": _ref("Practitioner", doctor_id), "authoredOn": now.isoformat()}, order))
            entries.append(("POST", "MedicationRequest", {
                "resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": DATA["medicine"], "subject": _ref("Patient", pid),
                "encounter": _ref("Encounter", enc["id"]),
                "dispenseRequest": {"quantity": {"value": 10, "unit": "tablet"}}}, None))
        done = c.transaction(doctor, entries)
        requests = [r for r in done if r.get("resourceType") == "ServiceRequest"]
        prescriptions = [r for r in done if r.get("resourceType") == "MedicationRequest"]
        self._count("lab orders", len(requests))
        self._count("prescriptions", len(prescriptions))
        # The lab collects and reports (a haemoglobin below 5 g/dL now and then: a critical value).
        lab: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        for sr in requests:
            pid, enc = sr["subject"]["reference"], sr["encounter"]["reference"]
            result = self._urn()
            lab.append(("POST", "Specimen", {
                "resourceType": "Specimen", "identifier": [{"system": BARCODE, "value": f"S{sr['id']}"}],
                "request": [_ref("ServiceRequest", sr["id"])], "subject": {"reference": pid},
                "collection": {"collectedDateTime": now.isoformat()}}, None))
            hb = round(rng.uniform(4.2, 16.5), 1)
            lab.append(("POST", "Observation", {
                "resourceType": "Observation", "status": "final", "basedOn": [_ref("ServiceRequest", sr["id"])],
                "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
                "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}]},
                "subject": {"reference": pid}, "encounter": {"reference": enc}, "effectiveDateTime": now.isoformat(),
                "valueQuantity": _quantity(hb, "g/dL")}, result))
            lab.append(("POST", "DiagnosticReport", {
                "resourceType": "DiagnosticReport", "status": "final", "basedOn": [_ref("ServiceRequest", sr["id"])],
                "code": sr["code"], "subject": {"reference": pid}, "encounter": {"reference": enc},
                "issued": (now + timedelta(minutes=rng.randint(20, 240))).isoformat(),
                "result": [{"reference": result}]}, None))
        c.transaction(self.lab, lab)
        self._count("lab results", len(requests))
        # The pharmacist dispenses each prescription from the main store (the stock ledger's balances and the
        # first-expiry batch follow the order of dispenses).
        with self.turns.turn("dispense", group.index):
            c.transaction(self.pharmacist, [("POST", "MedicationDispense", {
                "resourceType": "MedicationDispense", "status": "completed", "subject": mr["subject"],
                "context": mr["encounter"], "authorizingPrescription": [_ref("MedicationRequest", mr["id"])],
                "medicationCodeableConcept": DATA["medicine"], "quantity": {"value": 10, "unit": "tablet"},
                "location": _ref("Location", self.h.store), "whenHandedOver": now.isoformat()}, None)
                for mr in prescriptions])
        self._count("dispenses", len(prescriptions))
        visits = [(enc_id, pid) for _, pid, enc_id in orders]
        stays = self._admissions([pid for _, pid, _ in orders[:2]], group.beds, doctor, doctor_id)
        self._bill([*visits, *stays])

    def _admissions(self, pids: list[str], beds: tuple[str, ...], doctor: Any,
                    doctor_id: str) -> list[tuple[str, str]]:
        """Admit the group's first two patients to its beds: the first stays (its bed stays taken), the second
        sometimes moves bed and is discharged after the doctor's signed summary."""
        c, out = self.calls, []
        for n, pid in enumerate(pids):
            if len(beds) < 3:
                break
            if n == 0:  # still in hospital: the bed stays taken
                c.call(self.nurse, "POST", "Encounter", {
                    "resourceType": "Encounter", "status": "in-progress", "class": {"system": ACT, "code": "IMP"},
                    "subject": _ref("Patient", pid), "participant": [{"individual": _ref("Practitioner", doctor_id)}],
                    "serviceProvider": _ref("Organization", self.h.departments[0]),
                    "location": [{"location": _ref("Location", beds[0]), "status": "active"}]})
                self._count("admissions")
                continue
            first, second = beds[1], beds[2]
            enc = c.call(self.nurse, "POST", "Encounter", {
                "resourceType": "Encounter", "status": "in-progress", "class": {"system": ACT, "code": "IMP"},
                "subject": _ref("Patient", pid), "participant": [{"individual": _ref("Practitioner", doctor_id)}],
                "serviceProvider": _ref("Organization", self.h.departments[0]),
                "location": [{"location": _ref("Location", first), "status": "active"}]})
            if self.rng.random() < 0.5:
                enc = c.call(self.nurse, "PUT", f"Encounter/{enc['id']}", {
                    **enc, "location": [*enc["location"], {"location": _ref("Location", second), "status": "active"}]})
                self._count("transfers")
            now = datetime.now(UTC).isoformat()
            summary = {"resourceType": "Composition", "status": "final", "date": now, "title": "Discharge summary",
                       "type": {"coding": [{"system": LOINC, "code": "18842-5"}]}, "subject": _ref("Patient", pid),
                       "encounter": _ref("Encounter", enc["id"]), "author": [_ref("Practitioner", doctor_id)],
                       "attester": [{"mode": "legal", "time": now, "party": _ref("Practitioner", doctor_id)}]}
            c.transaction(doctor, [("POST", "Composition", summary, None),
                                   ("PUT", f"Encounter/{enc['id']}", {**enc, "status": "finished"}, None)])
            self._count("admissions")
            out.append((enc["id"], pid))
        return out

    def _bill(self, visits: list[tuple[str, str]]) -> None:
        c, rng = self.calls, self.rng
        invoices = []
        for enc, pid in visits:
            items = c.call(self.officer, "POST", f"Encounter/{enc}/$charge", {"resourceType": "Parameters"})
            lines = [{"chargeItemReference": _ref("ChargeItem", e["resource"]["id"])} for e in items.get("entry") or []]
            invoices.append(("POST", "Invoice", {
                "resourceType": "Invoice", "status": "issued", "subject": _ref("Patient", pid),
                "issuer": _ref("Organization", self.h.org), "lineItem": lines}, None))
        made = c.transaction(self.officer, invoices)
        self._count("invoices", len(made))
        payments = []
        for inv in made:
            share = rng.choices([1.0, 0.5, 0.0], [60, 25, 15])[0]
            amount = round(float(inv["totalGross"]["value"]) * share, 2)
            if amount > 0:
                payments.append(("POST", "PaymentReconciliation", {
                    "resourceType": "PaymentReconciliation", "status": "active",
                    "paymentAmount": {"value": amount, "currency": "INR"},
                    "detail": [{"type": {"coding": [{"code": "payment"}]}, "request": _ref("Invoice", inv["id"])}]},
                    None))
        c.transaction(self.officer, payments)
        self._count("payments", len(payments))


def seed(server: FhirServer, *, seed: int = 1, patients: int = 500, workers: int = 1, group: int = GROUP,
         not_before: datetime | None = None) -> Hospital:
    """Write the demo hospital; raises SeedError (with the server's answer) if any write is refused. With
    ``workers`` > 1 the groups (of ``group`` patients) are written by that many processes (parallel.py);
    ``not_before``: the earliest appointment (``Seeder.plan``)."""
    seeder = Seeder(server, seed)
    started = time.perf_counter()
    marker = seeder.calls.search(seeder.admin, "Organization", [("identifier", f"{DATA['marker']}|1")])
    if marker:
        raise SeedError("this database already holds the demo hospital (seed-demo runs once, on an empty database)")
    # no more processes than groups; one on SQLite, whose single writer would queue them anyway
    seeder.h.workers = 1 if server.engine.dialect.name == "sqlite" else min(workers, -(-patients // group))
    if seeder.h.workers > 1:
        groups = write_in_parallel(seeder, patients, seeder.h.workers, group, not_before)
    else:
        seeder.setup()
        groups = [seeder.run_group(g) for g in seeder.plan(patients, group, not_before)]
    for counts in groups:  # in group order: the same keys in the same order whoever wrote them
        for name, n in counts.items():
            seeder.h.counts[name] = seeder.h.counts.get(name, 0) + n
    seeder.h.counts["seconds"] = round(time.perf_counter() - started)
    return seeder.h

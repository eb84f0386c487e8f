"""Registration (issue 17 item 1): every new Patient gets an MRN ``PT-YYYYMMDD-NNNN``, and the national health
identifiers (ABHA number, ABHA address; identifiers.json) are well formed and held by one patient only.

The day's number comes from one row per day in ``frontdesk_mrn_day``, incremented in the creating transaction:
concurrent creates queue on that row, a rolled-back create gives its number back, so the sequence is
consecutive and unique (the database does it, on PostgreSQL and SQLite alike). Uniqueness of identifiers is
the primary key of ``frontdesk_identifier``, rewritten with each Patient write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from fhir_server.hooks import WriteEvent
from fhir_server.storage.repository import Repository
from fhir_server.workflows.frontdesk.tables import IDENTIFIER, MRN_DAY
from fhir_server.workflows.rules import rule_violation
from interfaces.abdm.identity import abha_address, abha_number

MRN_RE = re.compile(r"^PT-\d{8}-\d{4,}$")


@dataclass(frozen=True)
class IdentifierSystem:
    system: str
    name: str
    kind: str
    unique: bool
    one_per_person: bool


@cache
def identifier_systems() -> dict[str, IdentifierSystem]:
    data = json.loads((Path(__file__).parent / "identifiers.json").read_text())
    return {s["system"]: IdentifierSystem(s["system"], s["name"], s["kind"], bool(s.get("unique")),
                                         bool(s.get("onePerPerson")))
            for s in data["systems"]}


def merged(patient: dict[str, Any]) -> bool:
    """A patient merged into another ($merge): it keeps its identifiers for the record, but holds none."""
    return any(isinstance(link, dict) and link.get("type") == "replaced-by" for link in patient.get("link") or [])


class Registration:
    def __init__(self, mrn_system: str, timezone: str) -> None:
        self.mrn_system = mrn_system
        self.zone = ZoneInfo(timezone)

    # --- BEFORE_VALIDATE ---------------------------------------------------------------------------------

    def before_validate(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Patient" or event.resource is None or repo is None:
            return
        patient = event.resource
        identifiers = patient.get("identifier")
        if identifiers is not None and not isinstance(identifiers, list):
            return  # the validator names it
        self._check_national(patient)
        if event.interaction == "create":
            self._assign_mrn(patient, repo)
        else:
            self._keep_mrn(patient, event)

    def _check_national(self, patient: dict[str, Any]) -> None:
        systems = identifier_systems()
        for i, identifier in enumerate(patient.get("identifier") or []):
            if not isinstance(identifier, dict) or identifier.get("system") not in systems:
                continue
            spec = systems[identifier["system"]]
            value = identifier.get("value")
            where = (f"Patient.identifier[{i}].value",)
            if not isinstance(value, str):
                raise rule_violation(422, "identifier-invalid", f"The {spec.name} has no value", where)
            try:
                identifier["value"] = abha_number(value) if spec.kind == "abha-number" else abha_address(value)
            except ValueError as exc:
                raise rule_violation(422, "identifier-invalid", f"Invalid {spec.name} {value!r}: {exc}",
                                     where) from None

    def _mrns(self, patient: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        return [(i, ident) for i, ident in enumerate(patient.get("identifier") or [])
                if isinstance(ident, dict) and ident.get("system") == self.mrn_system]

    def _assign_mrn(self, patient: dict[str, Any], repo: Repository) -> None:
        given = self._mrns(patient)
        if given:
            raise rule_violation(422, "mrn-assigned-by-server", "The MRN is assigned by the server when a Patient "
                                 "is registered; leave it out", (f"Patient.identifier[{given[0][0]}]",))
        day = datetime.now(UTC).astimezone(self.zone).strftime("%Y%m%d")
        number = _next_number(repo, day)
        patient.setdefault("identifier", []).append({  # last: the client's identifier[i] keep their index
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                 "display": "Medical record number"}]},
            "system": self.mrn_system, "value": f"PT-{day}-{number:04d}"})

    def _keep_mrn(self, patient: dict[str, Any], event: WriteEvent) -> None:
        """The MRN never changes; an update that leaves it out keeps it."""
        before = self._mrns(event.previous.content or {}) if event.previous is not None else []
        now = self._mrns(patient)
        if not before:
            if now:
                raise rule_violation(422, "mrn-assigned-by-server", "The MRN is assigned by the server; this "
                                     "patient has none to change", (f"Patient.identifier[{now[0][0]}]",))
            return
        old = before[0][1]
        if not now:
            patient.setdefault("identifier", []).append(old)
        elif any(ident.get("value") != old.get("value") for _, ident in now):
            raise rule_violation(422, "mrn-immutable", f"The MRN {old.get('value')} cannot be changed",
                                 (f"Patient.identifier[{now[0][0]}].value",))

    # --- BEFORE_COMMIT -----------------------------------------------------------------------------------

    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Patient" or repo is None or event.resource_id is None:
            return
        if event.previous is not None:  # a first version holds nothing yet
            repo.execute(delete(IDENTIFIER).where(IDENTIFIER.c.patient_id == event.resource_id))
        patient = event.resource
        if patient is None or merged(patient):
            return
        systems = identifier_systems()
        for i, ident in enumerate(patient.get("identifier") or []):
            if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
                continue
            system = ident.get("system")
            if system != self.mrn_system and not (system in systems and systems[system].unique):
                continue
            try:
                with repo.conn.begin_nested():  # a refusal leaves the transaction usable for the error's audit
                    repo.execute(insert(IDENTIFIER).values(system=system, value=ident["value"],
                                                           patient_id=event.resource_id))
            except IntegrityError:
                name = "MRN" if system == self.mrn_system else systems[str(system)].name
                raise rule_violation(409, "identifier-duplicate", f"The {name} {ident['value']} already identifies "
                                     f"another Patient", (f"Patient.identifier[{i}].value",)) from None


def _next_number(repo: Repository, day: str) -> int:
    """The day's next MRN number; the row stays locked until this transaction ends."""
    stmt = (pg_insert(MRN_DAY) if repo.dialect == "postgresql" else sqlite_insert(MRN_DAY)).values(day=day, last=1)
    stmt = stmt.on_conflict_do_update(index_elements=[MRN_DAY.c.day], set_={"last": MRN_DAY.c.last + 1})
    return int(repo.execute(stmt.returning(MRN_DAY.c.last)).scalar_one())


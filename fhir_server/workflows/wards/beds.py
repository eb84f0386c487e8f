"""Admission, transfer and discharge as Encounter writes (issue 18, item 5; docs/workflows/wards.md).

An inpatient Encounter (class IMP) holds its bed as a ``location`` entry with status ``active`` whose
Location is a bed (physicalType ``bd``). Writing the Encounter:

- assigns a newly active bed: the writer locks the bed (``Repository.lock``: a PostgreSQL advisory lock,
  SQLite's write lock) and its Location row, refuses (409) a bed that is not free, and marks it occupied
  (operationalStatus O) in the same transaction, so of 20 concurrent admissions to one bed exactly one wins;
- keeps the history: every earlier location entry stays (422 otherwise); on a transfer the previous bed's
  entry becomes ``completed`` with ``period.end`` and that bed is released (U);
- discharges (status ``finished``) only when a final discharge summary Composition (LOINC 18842-5) with an
  attester names the Encounter (409 otherwise); the bed entry is completed, the bed released, and
  ``period.end`` set. Cancelling, retracting or deleting the Encounter releases its bed too.

Periods are normalised to UTC instants so the census compares them in SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import instant
from fhir_server.workflows.refs import ref_id, token
from fhir_server.workflows.rules import rule_violation
from fhir_server.workflows.wards.config import WardCodes, utc_instant

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

BED_OCCUPIED = "ward-bed-unavailable"
ONE_BED = "ward-one-bed"
HISTORY = "ward-location-history"
NO_SUMMARY = "ward-discharge-summary-missing"
HIERARCHY = "ward-location-hierarchy"
BED_HELD = "ward-bed-held"


def _entry_key(entry: dict[str, Any]) -> tuple[str | None, Any]:
    return ((entry.get("location") or {}).get("reference"), (entry.get("period") or {}).get("start"))


def _active(entry: dict[str, Any]) -> bool:
    return entry.get("status", "active") == "active" and not (entry.get("period") or {}).get("end")


class Beds:
    def __init__(self, ward_codes: WardCodes) -> None:
        self.codes = ward_codes
        # as system: the bed's state follows the admission, whoever (a nurse, the front desk) admits; this one
        # policy object also tells the bookkeeping's own Location writes from an app's
        self.keeper = as_system("wards: a bed's operationalStatus follows its admissions")

    # --- Location -------------------------------------------------------------------------------------

    def check_location(self, event: WriteEvent, repo: Repository) -> None:
        """A bed lies in a room or ward, a room in a ward (partOf). Only admissions occupy a bed and only a
        discharge or transfer frees it: an app may not set an occupied bed free, nor a bed occupied."""
        location = event.resource or {}
        previous = event.previous.content if event.previous is not None and not event.previous.deleted else None
        occupied = self.codes.status("occupied")["code"]
        before, after = self.codes.status_code(previous), self.codes.status_code(location)
        if previous is not None and repo.access is not self.keeper and (
                (before == occupied and self.codes.admittable(location)) or (after == occupied != before)):
            raise rule_violation(409, BED_HELD, f"Location/{event.resource_id} operationalStatus follows its "
                                                f"admissions: an inpatient Encounter occupies a bed, its discharge "
                                                f"or transfer frees it", ("Location.operationalStatus",))
        allowed = self.codes.data["parents"].get(self.codes.kind(location))
        if not allowed:
            return
        parent_id = ref_id(location.get("partOf"), "Location")
        parent = repo.current("Location", parent_id) if parent_id else None
        if parent is None or parent.deleted or self.codes.kind(parent.content) not in allowed:
            raise rule_violation(422, HIERARCHY, f"A Location of physicalType {self.codes.kind(location)} is "
                                                 f"partOf a Location of physicalType {' or '.join(allowed)}",
                                 ("Location.partOf",))

    # --- Encounter ------------------------------------------------------------------------------------

    def is_bed(self, repo: Repository, entry: dict[str, Any]) -> str | None:
        bed_id = ref_id(entry.get("location"), "Location")
        current = repo.current("Location", bed_id) if bed_id else None
        if current is None or current.deleted or self.codes.kind(current.content) != self.codes.bed:
            return None
        return bed_id

    def on_encounter(self, event: WriteEvent, repo: Repository) -> None:
        new = event.resource
        previous = event.previous.content if event.previous is not None and not event.previous.deleted else None
        if not self.codes.inpatient(new) and not self.codes.inpatient(previous):
            return
        now = instant(datetime.now(UTC))
        old_entries = (previous or {}).get("location") or []
        held = {bed for e in old_entries if _active(e) and (bed := self.is_bed(repo, e))}
        if new is None:  # deleted: its bed is free again
            self.release(repo, held)
            return
        entries = [self._normalised(e) for e in new.get("location") or []]
        kept = {_entry_key(e) for e in entries}
        for old in old_entries:
            if _entry_key(old) not in kept:
                raise rule_violation(422, HISTORY, "An inpatient Encounter keeps its location history: each "
                                                   f"earlier entry stays (missing: {_entry_key(old)[0]} from "
                                                   f"{_entry_key(old)[1]}); close it with status completed",
                                     ("Encounter.location",))
        leaving = new.get("status") in self.codes.data["leaves"]
        if new.get("status") == "finished" and (previous or {}).get("status") != "finished" \
                and event.interaction != "create":
            self.require_summary(repo, event.resource_id)
        beds = {i: bed for i, e in enumerate(entries) if _active(e) and (bed := self.is_bed(repo, e))}
        if not leaving:
            arriving = [i for i, bed in beds.items() if bed not in held]
            if arriving:  # a transfer: the beds held before are left
                for i, bed in beds.items():
                    if bed in held:
                        entries[i] = self._closed(entries[i], now)
                beds = {i: bed for i, bed in beds.items() if bed not in held}
            if len(beds) > 1:
                raise rule_violation(422, ONE_BED, "An inpatient lies in one bed at a time: one active bed "
                                                   "location at most", ("Encounter.location",))
        else:  # discharge, cancellation, retraction: every bed entry closes
            for i in beds:
                entries[i] = self._closed(entries[i], now)
            beds = {}
            if new.get("status") == "finished":
                new["period"] = {**(new.get("period") or {}), "end": (new.get("period") or {}).get("end") or now}
        for i, bed in beds.items():
            entries[i].setdefault("period", {}).setdefault("start", now)
            entries[i]["status"] = "active"
            if bed not in held:
                self.assign(repo, bed, f"Encounter.location[{i}]")
        self.release(repo, held - set(beds.values()))
        if entries:
            new["location"] = entries

    def _normalised(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = dict(entry)
        if isinstance(entry.get("period"), dict):
            entry["period"] = {k: utc_instant(v) if k in ("start", "end") else v for k, v in entry["period"].items()}
        return entry

    @staticmethod
    def _closed(entry: dict[str, Any], now: str) -> dict[str, Any]:
        period = dict(entry.get("period") or {})
        period.setdefault("end", now)
        return {**entry, "status": "completed", "period": period}

    def assign(self, repo: Repository, bed_id: str, where: str) -> None:
        repo.lock(f"bed|{bed_id}")  # the database serialises every writer of this bed from here to the commit
        bed = repo.current("Location", bed_id, for_update=True)
        if bed is None or bed.content is None or not self.codes.admittable(bed.content):
            status = self.codes.status_code(bed.content if bed else None)
            raise rule_violation(409, BED_OCCUPIED, f"Bed Location/{bed_id} is not free (operationalStatus "
                                                    f"{status}): no bed to two patients", (where,))
        self._set_status(repo, bed.id, bed.content, "occupied")

    def release(self, repo: Repository, bed_ids: set[str]) -> None:
        for bed_id in sorted(bed_ids):
            repo.lock(f"bed|{bed_id}")
            bed = repo.current("Location", bed_id, for_update=True)
            if bed is not None and bed.content is not None and \
                    self.codes.status_code(bed.content) == self.codes.status("occupied")["code"]:
                self._set_status(repo, bed_id, bed.content, "unoccupied")

    def _set_status(self, repo: Repository, bed_id: str, content: dict[str, Any], which: str) -> None:
        updated = {k: v for k, v in content.items() if k != "meta"}
        updated["operationalStatus"] = self.codes.status(which)
        with repo.acting_as(self.keeper):
            repo.update("Location", bed_id, updated)

    def require_summary(self, repo: Repository, encounter_id: str | None) -> None:
        spec = self.codes.data["dischargeSummary"]
        # as system: the summary counts whoever may read it (a discharge clerk may not read clinical notes)
        with repo.acting_as(as_system("wards: discharge needs the signed discharge summary of the stay")):
            ids = repo.find_ids("Composition", [("encounter", f"Encounter/{encounter_id}"), ("status", "final"),
                                                ("type", token(spec["system"], spec["code"]))], limit=20)
        for composition_id in ids:
            found = repo.current("Composition", composition_id)
            if found is not None and found.content and found.content.get("attester"):
                return
        raise rule_violation(409, NO_SUMMARY, f"Discharge needs a final discharge summary (Composition, type "
                                              f"LOINC {spec['code']}, with an attester) for Encounter/"
                                              f"{encounter_id}", ("Encounter.status",))

"""The rules of an Appointment, whichever way it is written (POST, PUT, PATCH, a Bundle, $book, $check-in).

Content (BEFORE_VALIDATE, 422): the status is one of the workflow's and moves only along its transitions
(resources/appointment-status.json); a cancellation carries ``cancelationReason``; a booking names its patient and
its times (taken from its slots when left out, refused when they differ); a booking or a move starts in the
future and at least the minimum lead time from now; a booked appointment moves (start, end or slot) at most
FHIR_SCHEDULING_MAX_RESCHEDULES times (counted by the server in the ``reschedule-count`` extension), and an
appointment that has begun or ended does not move.

State (BEFORE_COMMIT, 409), enforced by the database: the appointment takes transaction-scoped locks on its
slots, practitioners and patient (``pg_advisory_xact_lock``, in one order; SQLite writers are serialised by
BEGIN IMMEDIATE), then checks, under them, that each slot is free (read FOR UPDATE), that no other appointment
holding time (booked, arrived) overlaps it for the practitioner or the patient, and the practitioner's daily
cap. Of 50 concurrent bookings of one slot exactly one commits; the others wait for its commit and see the
slot busy. Booking marks its slots busy, cancelling frees them; a delete of an appointment holding time is
refused (cancel it instead). These reads and slot writes act as the system: the rule must see every
appointment, whoever books (a patient's own token sees only the patient's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.workflows.rules import rule_violation
from fhir_server.workflows.scheduling.common import (
    Rules,
    extension_url,
    fhir_instant,
    find,
    now,
    overlaps,
    parse_instant,
    ref_id,
    status_table,
)
from fhir_server.workflows.scheduling.shapes import daily_cap

SYSTEM = as_system("scheduling rules: every appointment of a practitioner or patient, and the slots they hold")
STAFF = ("Practitioner",)


def _status(content: dict[str, Any] | None) -> str:
    return str((content or {}).get("status") or "")


def _slot_ids(content: dict[str, Any] | None) -> list[str]:
    return [i for i in (ref_id(r, "Slot") for r in (content or {}).get("slot") or []) if i]


def _actors(content: dict[str, Any], rtype: str) -> list[str]:
    out = []
    for p in content.get("participant") or []:
        rid = ref_id(p.get("actor"), rtype)
        if rid and p.get("status") != "declined":
            out.append(f"{rtype}/{rid}")
    return sorted(set(out))


def _moved(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    return before is not None and any(before.get(k) != after.get(k) for k in ("start", "end", "slot"))


def _reschedules(content: dict[str, Any] | None) -> int:
    url = extension_url("reschedule-count")
    return next((int(e.get("valueUnsignedInt") or 0) for e in (content or {}).get("extension") or []
                 if e.get("url") == url), 0)


def _with_reschedules(content: dict[str, Any], count: int) -> dict[str, Any]:
    url = extension_url("reschedule-count")
    rest = [e for e in content.get("extension") or [] if e.get("url") != url]
    content["extension"] = rest + ([{"url": url, "valueUnsignedInt": count}] if count else [])
    if not content["extension"]:
        del content["extension"]
    return content


class AppointmentRules:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    # --- content --------------------------------------------------------------------------------------------

    def before_validate(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Appointment" or event.resource is None or repo is None:
            return
        table = status_table()
        after = event.resource
        before = event.previous.content if event.previous is not None and not event.previous.deleted else None
        old, new = _status(before), _status(after)
        if new not in table["transitions"]:
            raise rule_violation(422, "appointment-status", f"Appointment.status {new!r} is not used here: "
                                 f"{', '.join(s for s in table['transitions'] if s)}", ("Appointment.status",))
        if new not in table["transitions"][old]:
            raise rule_violation(422, "appointment-status-transition", f"An appointment goes from "
                                 f"{old or 'new'} to {', '.join(table['transitions'][old])}, not to {new}",
                                 ("Appointment.status",))
        if new == "cancelled" and not after.get("cancelationReason"):
            raise rule_violation(422, "appointment-cancel-reason", "A cancellation needs its reason",
                                 ("Appointment.cancelationReason",))
        self._from_slots(repo, after)
        self._from_roles(repo, after)
        moved = _moved(before, after)
        if moved and old not in table["movable"]:
            raise rule_violation(422, "appointment-closed", f"A {old} appointment keeps its time and slot",
                                 ("Appointment.start",))
        count = _reschedules(before)
        if moved and old == "booked":
            count += 1
            if count > self.rules.max_reschedules:
                raise rule_violation(422, "appointment-reschedule-limit", f"An appointment is rescheduled at most "
                                     f"{self.rules.max_reschedules} times; cancel it and book anew",
                                     ("Appointment.start",))
        event.resource = after = _with_reschedules(dict(after), count)  # the server counts, not the client
        if new in table["movable"] and (before is None or moved or old != new):
            self._times(after, required=new == "booked")
        if new == "booked" and not _actors(after, "Patient"):
            raise rule_violation(422, "appointment-patient", "A booked appointment names its patient",
                                 ("Appointment.participant",))

    def _from_slots(self, repo: Repository, content: dict[str, Any]) -> None:
        """Times and practitioner from the slots when left out; the slots must be free-standing and agree."""
        ids = _slot_ids(content)
        if not ids:
            return
        with repo.acting_as(SYSTEM):
            slots = []
            for i, sid in enumerate(ids):
                slot = repo.current("Slot", sid)
                if slot is None or slot.deleted or slot.content is None:
                    raise rule_violation(422, "appointment-slot", f"Slot/{sid} does not exist",
                                         (f"Appointment.slot[{i}]",))
                slots.append(slot.content)
            slots.sort(key=lambda s: parse_instant(s.get("start"), "Slot.start"))
            start, end = slots[0].get("start"), slots[-1].get("end")
            for name, value in (("start", start), ("end", end)):
                if not content.get(name):
                    content[name] = value
                elif parse_instant(content[name], f"Appointment.{name}") != parse_instant(value, f"Slot.{name}"):
                    raise rule_violation(422, "appointment-slot-times", f"Appointment.{name} differs from its "
                                         f"slots' {name}", (f"Appointment.{name}",))
            for name in ("serviceType", "specialty"):
                if not content.get(name) and slots[0].get(name):
                    content[name] = slots[0][name]
            schedule_id = ref_id(slots[0].get("schedule"), "Schedule")
            schedule = repo.current("Schedule", schedule_id) if schedule_id else None
            known = set(_actors(content, "Practitioner"))
            participants = list(content.get("participant") or [])
            for actor in (schedule.content or {}).get("actor") or [] if schedule is not None else []:
                pid = ref_id(actor, "Practitioner")
                if pid and f"Practitioner/{pid}" not in known:
                    participants.append({"actor": {"reference": f"Practitioner/{pid}"}, "required": "required",
                                         "status": "accepted"})
            content["participant"] = participants

    def _from_roles(self, repo: Repository, content: dict[str, Any]) -> None:
        """A PractitionerRole participant brings its Practitioner: the double-booking rules are per person."""
        known = set(_actors(content, "Practitioner"))
        added = []
        with repo.acting_as(SYSTEM):
            for rid in (ref_id(p.get("actor"), "PractitionerRole") for p in content.get("participant") or []):
                role = repo.current("PractitionerRole", rid) if rid else None
                pid = ref_id((role.content or {}).get("practitioner"), "Practitioner") if role is not None else None
                if pid and f"Practitioner/{pid}" not in known:
                    known.add(f"Practitioner/{pid}")
                    added.append({"actor": {"reference": f"Practitioner/{pid}"}, "required": "required",
                                  "status": "accepted"})
        if added:
            content["participant"] = [*content.get("participant", []), *added]

    def _times(self, content: dict[str, Any], *, required: bool) -> None:
        if not content.get("start") or not content.get("end"):
            if required:
                raise rule_violation(422, "appointment-times", "A booked appointment has its start and end (or "
                                     "its slot)", ("Appointment.start",))
            return
        start = parse_instant(content["start"], "Appointment.start")
        if parse_instant(content["end"], "Appointment.end") <= start:
            raise rule_violation(422, "appointment-times", "Appointment.end must be after its start",
                                 ("Appointment.end",))
        current = now()
        if start <= current:
            raise rule_violation(422, "appointment-in-past", "An appointment cannot be made in the past",
                                 ("Appointment.start",))
        if start < current + self.rules.lead:
            minutes = int(self.rules.lead.total_seconds() // 60)
            raise rule_violation(422, "appointment-lead-time", f"An appointment is made at least {minutes} minutes "
                                 f"ahead", ("Appointment.start",))

    # --- state ----------------------------------------------------------------------------------------------

    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Appointment" or repo is None:
            return
        holds = status_table()["holds"]
        before = event.previous.content if event.previous is not None and not event.previous.deleted else None
        after = event.resource
        if after is None:  # a delete
            if _status(before) in holds:
                raise rule_violation(422, "appointment-delete", "An appointment holding time is cancelled "
                                     "(with its reason), not deleted", ("Appointment.status",))
            return
        with repo.acting_as(SYSTEM):
            held_before = _status(before) in holds
            if _status(after) in holds and (not held_before or _moved(before, after)):
                self._take(repo, event.resource_id or "", before if held_before else None, after)
            elif held_before and _status(after) in status_table()["frees_slot"]:
                self._set_slots(repo, _slot_ids(before), "free", future_only=True)

    def _take(self, repo: Repository, appointment_id: str, before: dict[str, Any] | None,
              after: dict[str, Any]) -> None:
        slots, practitioners, patients = _slot_ids(after), _actors(after, "Practitioner"), _actors(after, "Patient")
        keys = sorted([f"Slot/{s}" for s in slots] + practitioners + patients)
        for key in keys:  # one order for every booking: no deadlocks between two of them
            repo.lock(f"scheduling:{key}")
        kept = set(_slot_ids(before))
        for i, sid in enumerate(slots):
            current = repo.current("Slot", sid, for_update=True)
            status = (current.content or {}).get("status") if current is not None and not current.deleted else None
            if sid not in kept and status != "free":
                raise rule_violation(409, "slot-taken", f"Slot/{sid} is not free ({status or 'gone'})",
                                     (f"Appointment.slot[{i}]",))
        start = parse_instant(after["start"], "Appointment.start")
        end = parse_instant(after["end"], "Appointment.end")
        for actor in practitioners + patients:
            rule = "practitioner-double-booked" if actor.startswith("Practitioner/") else "patient-double-booked"
            for other in self._holding(repo, actor, start, end, appointment_id):
                if overlaps(start, end, parse_instant(other.get("start"), "Appointment.start"),
                            parse_instant(other.get("end"), "Appointment.end")):
                    raise rule_violation(409, rule, f"{actor} already has Appointment/{other['id']} at that time",
                                         ("Appointment.participant",))
        cap = self._cap(repo, after)
        day_start, day_end = self.rules.local_day(start)
        for actor in practitioners:
            booked = [a for a in self._holding(repo, actor, day_start, day_end, appointment_id)
                      if day_start <= parse_instant(a.get("start"), "Appointment.start") < day_end]
            if len(booked) >= cap:
                raise rule_violation(409, "practitioner-daily-cap", f"{actor} has {len(booked)} appointments that "
                                     f"day, the most allowed ({cap})", ("Appointment.start",))
        self._set_slots(repo, [s for s in kept if s not in slots], "free", future_only=True)
        self._set_slots(repo, [s for s in slots if s not in kept], "busy")

    def _holding(self, repo: Repository, actor: str, start: datetime, end: datetime,
                 appointment_id: str) -> list[dict[str, Any]]:
        """Other appointments of ``actor`` holding time and starting in [start - 1 day, end)."""
        since = start.timestamp() - 86400
        found = find(repo, "Appointment", [
            ("actor", actor), ("status", ",".join(status_table()["holds"])),
            ("date", f"ge{fhir_instant(datetime.fromtimestamp(since, start.tzinfo))}"),
            ("date", f"lt{fhir_instant(end)}")])
        return [a for a in found if a.get("id") != appointment_id and a.get("start") and a.get("end")]

    def _cap(self, repo: Repository, content: dict[str, Any]) -> int:
        """The daily cap of the role behind the appointment (its slot's schedule, or a PractitionerRole actor)."""
        role_ids = [i for i in (ref_id(p.get("actor"), "PractitionerRole") for p in content.get("participant") or [])
                    if i]
        for sid in _slot_ids(content)[:1]:
            slot = repo.current("Slot", sid)
            schedule_id = ref_id((slot.content or {}).get("schedule"), "Schedule") if slot is not None else None
            schedule = repo.current("Schedule", schedule_id) if schedule_id else None
            role_ids += [i for i in (ref_id(a, "PractitionerRole") for a in
                                     ((schedule.content or {}).get("actor") or [] if schedule else [])) if i]
        for rid in role_ids:
            role = repo.current("PractitionerRole", rid)
            cap = daily_cap(role.content) if role is not None and role.content is not None else None
            if cap is not None:
                return cap
        return self.rules.daily_cap

    def _set_slots(self, repo: Repository, ids: list[str], status: str, *, future_only: bool = False) -> None:
        for sid in ids:
            current = repo.current("Slot", sid, for_update=True)
            if current is None or current.deleted or current.content is None:
                continue
            slot = current.content
            if slot.get("status") == status or slot.get("status") not in ("free", "busy"):
                continue  # withdrawn or unavailable slots stay so
            if future_only and parse_instant(slot.get("start"), "Slot.start") <= now():
                continue
            repo.update("Slot", sid, {**slot, "status": status})

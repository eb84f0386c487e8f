"""Shared pieces of test_workflows_scheduling.py: a hospital's departments, doctors and patients over HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from tests.integration.test_auth_support import Smart

JSON = {"Content-Type": "application/fhir+json"}
ZONE = ZoneInfo("Asia/Kolkata")
EXT = "https://fhir-server.dev/StructureDefinition/"
RULE_SYSTEM = "https://fhir-server.dev/CodeSystem/hospital-rule"
SNOMED = "http://snomed.info/sct"
CARDIOLOGY = {"coding": [{"system": SNOMED, "code": "394579002", "display": "Cardiology"}]}
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def day(offset: int) -> date:
    return (datetime.now(ZONE) + timedelta(days=offset)).date()


def at(offset: int, hhmm: str) -> str:
    """Local clinic time ``hhmm`` on the day ``offset`` days from today, as a FHIR instant."""
    return datetime.combine(day(offset), time.fromisoformat(hhmm), ZONE).isoformat(timespec="seconds")


def rule(response: httpx.Response) -> str:
    """The rule code of a refusal (issue.details), or '' when the response is no rule violation."""
    body = response.json()
    for issue in body.get("issue") or []:
        for coding in (issue.get("details") or {}).get("coding") or []:
            if coding.get("system") == RULE_SYSTEM:
                return str(coding["code"])
    return ""


def expression(response: httpx.Response) -> list[str]:
    return [e for issue in response.json().get("issue") or [] for e in issue.get("expression") or []]


@dataclass
class Desk:
    """An app at the hospital: one token, helpers for the FHIR calls."""

    smart: Smart
    token: str

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if body is not None:
            kw["content"] = orjson.dumps(body)
            kw["headers"] = {**JSON, **kw.get("headers", {})}
        return self.smart.fhir(method, path, self.token, **kw)

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        r = self.call("POST", resource["resourceType"], resource)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def put(self, resource: dict[str, Any]) -> httpx.Response:
        return self.call("PUT", f"{resource['resourceType']}/{resource['id']}", resource)

    def read(self, reference: str) -> dict[str, Any]:
        r = self.call("GET", reference)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def search(self, path: str) -> list[dict[str, Any]]:
        r = self.call("GET", path)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry") or [] if e.get("search", {}).get("mode") == "match"]

    def patient(self) -> str:
        return "Patient/" + self.create({"resourceType": "Patient", "name": [{"family": f"P{uuid.uuid4().hex[:6]}"}],
                                         "gender": "female"})["id"]

    def doctor(self, service: str | None = None, **role: Any) -> dict[str, str]:
        """A practitioner and a PractitionerRole working 09:00-12:00 every day (unless ``role`` says otherwise)."""
        practitioner = self.create({"resourceType": "Practitioner", "name": [{"family": "Dr " + uuid.uuid4().hex[:5]}]})
        body: dict[str, Any] = {
            "resourceType": "PractitionerRole", "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner['id']}"}, "specialty": [CARDIOLOGY],
            "availableTime": [{"daysOfWeek": ALL_DAYS, "availableStartTime": "09:00:00",
                               "availableEndTime": "12:00:00"}], **role}
        if service:
            body["healthcareService"] = [{"reference": service}]
        created = self.create(body)
        return {"practitioner": f"Practitioner/{practitioner['id']}", "role": f"PractitionerRole/{created['id']}",
                "role_id": created["id"]}

    def slots(self, practitioner: str, offset: int = 1, status: str = "free") -> list[dict[str, Any]]:
        """The practitioner's slots on that day, in time order."""
        schedules = self.search(f"Schedule?actor={practitioner}")
        assert len(schedules) == 1, schedules
        found = self.search(f"Slot?schedule=Schedule/{schedules[0]['id']}&status={status}"
                            f"&start=ge{day(offset).isoformat()}&start=lt{day(offset + 1).isoformat()}&_count=100"
                            f"&_sort=start")
        return found

    def appointment(self, patient: str, *, slot: str | None = None, start: str | None = None,
                    end: str | None = None, practitioner: str | None = None, status: str = "booked",
                    **extra: Any) -> httpx.Response:
        body: dict[str, Any] = {"resourceType": "Appointment", "status": status,
                                "participant": [{"actor": {"reference": patient}, "status": "accepted"}], **extra}
        if practitioner:
            body["participant"].append({"actor": {"reference": practitioner}, "status": "accepted"})
        if slot:
            body["slot"] = [{"reference": slot}]
        if start:
            body["start"], body["end"] = start, end
        return self.call("POST", "Appointment", body)

    def book(self, patient: str, slot: str, **extra: Any) -> dict[str, Any]:
        r = self.appointment(patient, slot=slot, **extra)
        assert r.status_code == 201, r.text
        return dict(r.json())

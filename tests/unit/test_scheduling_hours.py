"""The slots a PractitionerRole's hours give (fhir_server/workflows/scheduling/hours.py): pure, no database."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from fhir_server.config import Settings
from fhir_server.workflows.scheduling.common import Rules
from fhir_server.workflows.scheduling.hours import slot_times

RULES = Rules.of(Settings(scheduling_timezone="Asia/Kolkata", scheduling_clinic_hours="08:00-20:00"))
MONDAY = date(2031, 3, 3)  # a Monday, far ahead


def local(day: date, hhmm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hhmm), RULES.zone)


def starts(role: dict[str, Any], minutes: int = 30, cap: int = 40, days: int = 1) -> list[str]:
    out = slot_times(role, RULES, minutes, cap, local(MONDAY, "00:00"), local(MONDAY + timedelta(days=days), "00:00"))
    return [s.astimezone(RULES.zone).strftime("%a %H:%M") for s, _ in out]


def hours(days: list[str], start: str, end: str) -> dict[str, Any]:
    return {"daysOfWeek": days, "availableStartTime": start + ":00", "availableEndTime": end + ":00"}


def test_split_shift_overlapping_entries_and_weekdays() -> None:
    role = {"availableTime": [hours(["mon"], "09:00", "10:00"), hours(["mon"], "09:30", "10:30"),
                              hours(["mon"], "17:00", "18:00"), hours(["tue"], "11:00", "12:00")]}
    assert starts(role) == ["Mon 09:00", "Mon 09:30", "Mon 10:00", "Mon 17:00", "Mon 17:30"]
    assert starts(role, days=2)[-2:] == ["Tue 11:00", "Tue 11:30"]


def test_all_day_is_the_clinic_hours_and_slots_fit_whole() -> None:
    role = {"availableTime": [{"daysOfWeek": ["mon"], "allDay": True}]}
    out = starts(role, minutes=50)
    assert out[0] == "Mon 08:00" and out[-1] == "Mon 18:50" and len(out) == 14  # 19:40-20:30 does not fit
    assert starts({"availableTime": [hours(["mon"], "19:00", "22:00")]}) == ["Mon 19:00", "Mon 19:30"]


def test_cap_leave_period_and_inactive() -> None:
    role = {"availableTime": [hours(["mon", "tue"], "09:00", "12:00")]}
    assert len(starts(role, cap=4)) == 4
    leave = {**role, "notAvailable": [{"during": {"start": local(MONDAY, "10:00").isoformat(),
                                                  "end": local(MONDAY, "11:00").isoformat()}}]}
    assert starts(leave) == ["Mon 09:00", "Mon 09:30", "Mon 11:00", "Mon 11:30"]
    open_ended = {**role, "notAvailable": [{"during": {"start": local(MONDAY, "11:00").isoformat()}}]}
    assert starts(open_ended, days=2) == ["Mon 09:00", "Mon 09:30", "Mon 10:00", "Mon 10:30"]
    ends = {**role, "period": {"end": local(MONDAY + timedelta(days=1), "00:00").isoformat()}}
    assert len(starts(ends, days=2)) == 6
    assert starts({**role, "active": False}) == []

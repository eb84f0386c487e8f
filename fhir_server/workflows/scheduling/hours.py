"""The slots a PractitionerRole's hours give over a window (pure: no database).

Per clinic day: the ``availableTime`` entries for that weekday (allDay = the clinic's hours), each clipped to
the clinic's hours, cut into slots of the service's length that fit whole; slots touching leave
(``notAvailable.during``, open-ended when it has no end) or outside ``PractitionerRole.period`` are left
out; then the first ``cap`` of the day. Only slots starting inside [start, end) are returned.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from fhir_server.workflows.scheduling.common import Rules, overlaps, parse_instant
from fhir_server.workflows.scheduling.shapes import DAYS, hours

FAR = datetime.max.replace(year=9000)


def _intervals(role: dict[str, Any], weekday: str, rules: Rules) -> list[tuple[time, time]]:
    out: list[tuple[time, time]] = []
    for i, entry in enumerate(role.get("availableTime") or []):
        if weekday not in (entry.get("daysOfWeek") or []):
            continue
        span = hours(entry, f"PractitionerRole.availableTime[{i}]") or (rules.clinic_open, rules.clinic_close)
        start, end = max(span[0], rules.clinic_open), min(span[1], rules.clinic_close)
        if start < end:
            out.append((start, end))
    merged: list[tuple[time, time]] = []
    for start, end in sorted(out):  # overlapping entries (a split shift listed twice) make no double slots
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _blocked(role: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    """Leave periods, and the time outside the role's own period."""
    out = []
    for entry in role.get("notAvailable") or []:
        during = entry.get("during") or {}
        start = parse_instant(during.get("start"), "PractitionerRole.notAvailable.during.start")
        end = parse_instant(during["end"], "PractitionerRole.notAvailable.during.end") if during.get("end") else None
        out.append((start, end or FAR.replace(tzinfo=start.tzinfo)))
    period = role.get("period") or {}
    if period.get("start"):
        begin = parse_instant(period["start"], "PractitionerRole.period.start")
        out.append((begin - timedelta(days=365 * 100), begin))
    if period.get("end"):
        finish = parse_instant(period["end"], "PractitionerRole.period.end")
        out.append((finish, FAR.replace(tzinfo=finish.tzinfo)))
    return out


def slot_times(role: dict[str, Any], rules: Rules, minutes: int, cap: int, start: datetime,
               end: datetime) -> list[tuple[datetime, datetime]]:
    if role.get("active") is False or start >= end:
        return []
    step = timedelta(minutes=minutes)
    blocked = _blocked(role)
    out: list[tuple[datetime, datetime]] = []
    day = start.astimezone(rules.zone).date()
    last = end.astimezone(rules.zone).date()
    while day <= last:
        taken = 0
        for opening, closing in _intervals(role, DAYS[day.weekday()], rules):
            at = datetime.combine(day, opening, rules.zone)
            stop = datetime.combine(day, closing, rules.zone)
            while at + step <= stop and taken < cap:
                slot = (at, at + step)
                if not any(overlaps(*slot, b0, b1) for b0, b1 in blocked):
                    taken += 1
                    if start <= at < end:
                        out.append(slot)
                at += step
        day += timedelta(days=1)
    return out

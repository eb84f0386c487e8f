"""Whom to tell, how and in which language: the patient's opt-out, contact points and preferred language.

- Opt-out: the extension OPT_OUT (valueBoolean true) on the Patient: no messages at all; on one of its
  ``telecom`` entries: that address is never used.
- Contact preferences: ``Patient.telecom`` entries in force now (``period``), best ``rank`` first (1 is the
  most preferred; unranked entries come after ranked ones, in their order). The first entry that a configured
  channel can reach wins: ``email`` by e-mail, ``sms`` (or a ``mobile`` ``phone``) by SMS.
- Language: ``Patient.communication`` (the ``preferred`` one first), matched on its base code (hi-IN -> hi).
"""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

OPT_OUT = "https://fhir-server.dev/StructureDefinition/notification-opt-out"
CHANNELS: dict[str, dict[str, Any]] = json.loads(
    resources.files(__package__).joinpath("channels.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Contact:
    channel: str  # email | sms
    address: str


def _opts_out(element: dict[str, Any]) -> bool:
    return any(e.get("url") == OPT_OUT and e.get("valueBoolean") is True for e in element.get("extension", []))


def opted_out(patient: dict[str, Any]) -> bool:
    return _opts_out(patient)


def _instant(value: str | None, end: bool) -> datetime | None:
    """A FHIR dateTime (year, year-month, date or full) as the first / last instant it covers."""
    if not value:
        return None
    if len(value) <= 10:  # a year, month or day: all of it counts
        parts = [int(p) for p in value.split("-")]
        year = parts[0]
        month = parts[1] if len(parts) > 1 else (12 if end else 1)
        day = parts[2] if len(parts) > 2 else (calendar.monthrange(year, month)[1] if end else 1)
        moment = datetime(year, month, day, tzinfo=UTC)
        return moment + timedelta(days=1, microseconds=-1) if end else moment
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _in_force(telecom: dict[str, Any], now: datetime) -> bool:
    period = telecom.get("period") or {}
    start, end = _instant(period.get("start"), False), _instant(period.get("end"), True)
    return (start is None or start <= now) and (end is None or now <= end)


def _channel(telecom: dict[str, Any]) -> str | None:
    for name, channel in CHANNELS.items():
        if telecom.get("system") in channel["telecomSystems"]:
            uses = channel.get("phoneUse")
            if telecom.get("system") == "phone" and uses and telecom.get("use") not in uses:
                continue
            return name
    return None


def preferred_contact(patient: dict[str, Any], usable: set[str], now: datetime) -> Contact | None:
    """The best-ranked contact point in force that a usable channel reaches; None: no way to reach them."""
    candidates = [t for t in patient.get("telecom", []) if t.get("value") and not _opts_out(t) and _in_force(t, now)]
    ranked = sorted(enumerate(candidates), key=lambda it: (it[1].get("rank", 1 << 30), it[0]))
    for _i, telecom in ranked:
        channel = _channel(telecom)
        if channel in usable:
            return Contact(channel, str(telecom["value"]))
    return None


def preferred_language(patient: dict[str, Any], available: set[str], default: str) -> str:
    entries = sorted(patient.get("communication", []), key=lambda c: not c.get("preferred", False))
    for entry in entries:
        language = entry.get("language", {})
        codes = [c.get("code", "") for c in language.get("coding", [])] + [language.get("text", "")]
        for code in codes:
            base = str(code).split("-")[0].lower()
            if base in available:
                return base
    return default


def display_name(patient: dict[str, Any]) -> str:
    """How the message greets the patient: the usual/official name's given + family, or its text."""
    names = patient.get("name", [])
    name = next((n for n in names if n.get("use") in ("usual", "official")), names[0] if names else {})
    if name.get("text"):
        return str(name["text"])
    return " ".join([*name.get("given", []), name.get("family", "")]).strip()

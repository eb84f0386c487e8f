"""Repeated no-shows raise a Flag on the patient (issue 17 item 6).

When an appointment becomes ``noshow``, the patient's latest FHIR_SCHEDULING_NOSHOW_FLAG_AFTER attended or
missed appointments (by start; cancelled ones do not count) are looked at, this one included: all missed
-> an active administrative ``Flag`` (code ``repeated-no-show`` of our scheduling CodeSystem) on the patient,
unless one is active already. The Flag is the server's own record, written in the same transaction as the
status, whoever set it (a front desk may not write Flags itself).
"""

from __future__ import annotations

from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.workflows.scheduling.common import Rules, data, fhir_instant, find, now, parse_instant, ref_id

SYSTEM = as_system("the no-show Flag is the server's record of the patient's missed appointments")
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"


def flag_code() -> dict[str, Any]:
    system = data("CodeSystem-scheduling.json")
    concept = next(c for c in system["concept"] if c["code"] == "repeated-no-show")
    return {"system": system["url"], "code": concept["code"], "display": concept["display"]}


class NoShowFlag:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def __call__(self, event: WriteEvent, repo: Repository | None) -> None:
        after, previous = event.resource, event.previous
        if event.resource_type != "Appointment" or repo is None or after is None or after.get("status") != "noshow":
            return
        if previous is not None and (previous.content or {}).get("status") == "noshow":
            return
        threshold = self.rules.noshow_flag_after
        patients = [pid for pid in (ref_id(p.get("actor"), "Patient") for p in after.get("participant") or []) if pid]
        if threshold < 1 or not patients:
            return
        with repo.acting_as(SYSTEM):
            for pid in patients:
                repo.lock(f"scheduling:noshow:Patient/{pid}")  # two no-shows at once raise one Flag
                seen = find(repo, "Appointment", [("patient", f"Patient/{pid}"),
                                                  ("status", "noshow,arrived,fulfilled")])
                seen = [a for a in seen if a.get("start")]
                seen.sort(key=lambda a: parse_instant(a["start"], "Appointment.start"), reverse=True)
                latest = seen[:threshold]
                if len(latest) < threshold or any(a.get("status") != "noshow" for a in latest):
                    continue
                code = flag_code()
                flags = find(repo, "Flag", [("subject", f"Patient/{pid}")])
                if any(f.get("status") == "active" and any(c.get("system") == code["system"] and
                                                           c.get("code") == code["code"]
                                                           for c in (f.get("code") or {}).get("coding") or [])
                       for f in flags):
                    continue
                repo.create("Flag", {
                    "resourceType": "Flag", "status": "active",
                    "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "admin",
                                              "display": "Administrative"}]}],
                    "code": {"coding": [code], "text": f"{threshold} consecutive missed appointments"},
                    "subject": {"reference": f"Patient/{pid}"},
                    "period": {"start": fhir_instant(now(), self.rules.zone)}})

"""The ward rules' codes, read once per server from ``wards.json`` (data, not code)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_server.storage.repository import instant
from fhir_server.workflows.refs import codes

DATA = Path(__file__).with_name("wards.json")


@dataclass(frozen=True)
class WardCodes:
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path = DATA) -> WardCodes:
        return cls(json.loads(path.read_text()))

    def kind(self, location: dict[str, Any] | None) -> str | None:
        """wa / ro / bd (or another location-physical-type code) of a Location."""
        found = codes((location or {}).get("physicalType"), self.data["physicalType"]["system"])
        return found[0] if found else None

    @property
    def bed(self) -> str:
        return str(self.data["physicalType"]["bed"])

    def status_code(self, location: dict[str, Any] | None) -> str | None:
        coding = (location or {}).get("operationalStatus")
        if isinstance(coding, dict) and coding.get("system") == self.data["operationalStatus"]["system"]:
            return coding.get("code")
        return None

    def status(self, which: str) -> dict[str, str]:
        spec = self.data["operationalStatus"]
        return {"system": spec["system"], **spec[which]}

    def admittable(self, location: dict[str, Any] | None) -> bool:
        code = self.status_code(location)
        return code is None or code in self.data["operationalStatus"]["admittable"]

    def inpatient(self, encounter: dict[str, Any] | None) -> bool:
        klass = (encounter or {}).get("class")
        spec = self.data["inpatientClass"]
        return isinstance(klass, dict) and klass.get("system") == spec["system"] and klass.get("code") in spec["codes"]


def utc_instant(text: Any) -> Any:
    """A dateTime as the UTC instant text the census compares in SQL (same format for every value);
    anything unparseable is left for the validator to refuse."""
    if not isinstance(text, str) or len(text) < 10:
        return text
    try:
        moment = datetime.fromisoformat(text if len(text) > 10 else text + "T00:00:00+00:00")
    except ValueError:
        return text
    return instant(moment if moment.tzinfo else moment.replace(tzinfo=UTC))

"""Errors found in a message's content, located as an ERR segment names them (table 0357 codes)."""

from __future__ import annotations

from dataclasses import dataclass

MESSAGE_ACCEPTED = "0"  # with severity W: accepted, but something it said was not mapped
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_INTERNAL_ERROR = "207"

ERROR_TEXT = {
    "0": "Message accepted", "100": "Segment sequence error", "101": "Required field missing",
    "102": "Data type error", "103": "Table value not found", "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id", "203": "Unsupported version id", "204": "Unknown key identifier",
    "205": "Duplicate key identifier", "207": "Application internal error",
}


@dataclass(frozen=True)
class ErrorDetail:
    """One ERR segment: where (segment id, its 1-based occurrence, field, component) and why."""

    code: str
    text: str
    segment: str = ""
    sequence: int = 1
    field: int = 0
    component: int = 0
    severity: str = "E"

    @property
    def where(self) -> str:
        """e.g. ``OBX[2]-5.1``; "" for the message as a whole."""
        if not self.segment:
            return ""
        out = f"{self.segment}[{self.sequence}]"
        if self.field:
            out += f"-{self.field}"
            if self.component:
                out += f".{self.component}"
        return out

    def describe(self) -> str:
        return f"{self.where}: {self.text}" if self.where else self.text


class MappingError(Exception):
    """The content is wrong (AE); ``details`` become ERR segments."""

    def __init__(self, *details: ErrorDetail) -> None:
        super().__init__("; ".join(d.describe() for d in details))
        self.details = list(details)


class RejectedMessage(Exception):
    """The message cannot be taken at all (AR): unparseable, unsupported type, event or version."""

    def __init__(self, detail: ErrorDetail) -> None:
        super().__init__(detail.describe())
        self.detail = detail

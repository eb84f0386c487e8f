"""What a mapping template is rendered against: the message's values (with where they came from, for ERR
locations), the resources planned from the message, and the rendering context (engine.py renders)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mappings.hl7v2.errors import ErrorDetail, MappingError
from mappings.hl7v2.message import Segment, V2Message, unescape

if TYPE_CHECKING:
    from mappings.hl7v2.engine import Engine

Json = Any
# uuid5 namespace for ids derived from message content (stable across re-sends and replays).
NAMESPACE = uuid.UUID("5f0c1a52-8d1e-4b7e-9a52-4c1f0d7e2a11")


class Value:
    """One piece of a message: ``raw`` (still escaped) at ``level`` 0 = repetition, 1 = component,
    2 = subcomponent, and where it came from (for ERR locations). A plain slotted class, not a frozen
    dataclass: mapping one message makes thousands, and a frozen dataclass's __init__ costs several times
    more. Treated as immutable all the same."""

    __slots__ = ("component", "field", "level", "raw", "segment")

    def __init__(self, raw: str, level: int, segment: Segment, field: int, component: int = 0) -> None:
        self.raw = raw
        self.level = level
        self.segment = segment
        self.field = field
        self.component = component

    def parts(self) -> list[str]:
        enc = self.segment.enc
        if self.level == 0:
            return self.raw.split(enc.component)
        if self.level == 1:
            return self.raw.split(enc.subcomponent)
        return [self.raw]

    def child(self, index: int) -> Value | None:
        parts = self.parts()
        if index > len(parts) or not parts[index - 1]:
            return None
        return Value(parts[index - 1], min(self.level + 1, 2), self.segment, self.field,
                     self.component or (index if self.level == 0 else 0))

    def part(self, index: int) -> str:
        """Text of one component (or subcomponent) of this value; "" when absent."""
        child = self.child(index)
        return child.text() if child else ""

    def text(self, formatted: bool = True) -> str:
        atom = self.raw
        enc = self.segment.enc
        if self.level == 0:
            atom = atom.split(enc.component, 1)[0]
        if self.level <= 1:
            atom = atom.split(enc.subcomponent, 1)[0]
        if atom == '""':
            return ""
        if self.segment.id == "MSH" and self.field <= 2:
            return self.raw
        return unescape(atom, enc, formatted).strip()

    def error(self, code: str, text: str) -> MappingError:
        return MappingError(ErrorDetail(code, text, self.segment.id, self.segment.occurrence, self.field,
                                        self.component))


@dataclass
class Planned:
    key: str
    resource_type: str
    segment: Segment
    uuid: str
    rule: dict[str, Any]
    anchor: Segment | None = None  # the group parent (e.g. its OBR) when the rule names a "group"
    resource: dict[str, Any] | None = None
    value: Value | None = None  # the field repetition it is made from, when the rule names a "field" (PV1-7)

    @property
    def full_url(self) -> str:
        return self.existing or f"urn:uuid:{self.uuid}"

    # A resource the server already holds that this one is (an order found by barcode or placer number):
    # "Type/id", referenced instead of written; with the subject it has (mappings/hl7v2/law.py).
    existing: str | None = None
    subject: str | None = None
    merge: dict[str, Any] | None = None  # the existing resource's content, under what the message says


@dataclass
class Context:
    engine: Engine
    msg: V2Message
    seg: Segment
    variables: dict[str, str]
    planned: list[Planned]
    value: Value | None = None

    def at(self, seg: Segment) -> Context:
        return Context(self.engine, self.msg, seg, self.variables, self.planned)

    def with_value(self, value: Value) -> Context:
        return Context(self.engine, self.msg, self.seg, self.variables, self.planned, value)


# (the value at the directive path — for "$fn" the datatype value a partial renders, if any; context; node)
Function = Callable[..., Json]


def stable_uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))

"""HL7 v2 text as the console shows it: the fields that name, identify, locate or reach a person replaced by
``***`` (PID names, identifiers, birth date, addresses, phones; the same of next of kin, guarantors and
insured persons), and every quoted value in ERR texts masked as the /admin views mask stored errors
(interfaces/mllp/admin.py). Segment structure, message type, codes and results stay readable."""

from __future__ import annotations

import re

from interfaces.mllp.admin import mask as mask_quoted

MASK = "***"
# Segment -> the fields (1-based, as HL7 numbers them) that are a person's identity or contact.
PERSONAL: dict[str, frozenset[int]] = {
    # PID-2/3/4 ids, 5 name, 6 mother's maiden name, 7 birth date, 9 alias, 11 address, 12 county,
    # 13/14 phones, 18 account, 19 SSN, 20 driver's licence, 21 mother's id, 23 birthplace
    "PID": frozenset({2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 18, 19, 20, 21, 23}),
    "NK1": frozenset({2, 4, 5, 6, 30, 31, 32, 33, 37}),
    "GT1": frozenset({2, 3, 5, 6, 7, 8, 12, 19}),
    "IN1": frozenset({16, 18, 19, 36, 49}),
    "IN2": frozenset({1, 2, 6, 8}),
}
_SEGMENTS = re.compile(r"\r\n|\r|\n")


def segments(text: str) -> list[str]:
    return [s for s in _SEGMENTS.split(text.strip("\x0b\x1c\r\n")) if s]


def mask_message(text: str | None) -> str:
    """The message (or ACK) one segment a line, personal fields masked."""
    if not text:
        return ""
    lines = segments(text)
    sep = lines[0][3] if lines and lines[0].startswith("MSH") and len(lines[0]) > 3 else "|"
    return "\n".join(_mask_segment(line, sep) for line in lines)


def _mask_segment(line: str, sep: str) -> str:
    fields = line.split(sep)
    name = fields[0][:3]
    if name == "ERR" or name == "MSA" or name == "NTE":  # free text quoting the message's own values
        return mask_quoted(line) or ""
    personal = PERSONAL.get(name)
    if not personal:
        return line
    return sep.join(MASK if i in personal and value else value for i, value in enumerate(fields))


def identifiers(text: str) -> list[str]:
    """PID-3's identifier values (the first component of each repetition): what a patient search matches."""
    for line in segments(text):
        if line.startswith("PID"):
            sep = line[3] if len(line) > 3 else "|"
            fields = line.split(sep)
            if len(fields) > 3:
                msh = segments(text)[0]
                component = msh[4] if msh.startswith("MSH") and len(msh) > 4 else "^"
                repetition = msh[5] if msh.startswith("MSH") and len(msh) > 5 else "~"
                return [r.split(component)[0] for r in fields[3].split(repetition) if r]
    return []

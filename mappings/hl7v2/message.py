"""The ER7 (pipe-and-hat) message model: bytes -> text (MSH-18) -> segments/fields/components, unescaped.

Positions follow the standard's numbering: ``seg.get(3, rep=0, comp=4, sub=2)`` is PID-3.4.2 of the first
repetition; MSH-1 is the field separator and MSH-2 the encoding characters, as in the spec. Tokenising is
our own (python-hl7's approach, a few microseconds per segment); hl7apy's full object parse costs about
48 ms for a five-segment message on this machine, far too slow for a lab interface, so hl7apy's
reference library is used for what it knows best (supported versions and message structures, see
``header.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# MSH-18 character sets (HL7 table 0211) -> Python codecs. Unknown sets fall back to the default.
CHARSETS = {
    "ASCII": "ascii", "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4",
    "8859/5": "iso8859-5", "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8",
    "8859/9": "iso8859-9", "8859/15": "iso8859-15", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8",
    "UNICODE UTF-16": "utf-16", "ISO IR6": "ascii", "ISO IR100": "latin-1", "ISO IR192": "utf-8",
    "ISO IR87": "iso2022_jp", "ISO IR159": "iso2022_jp_2", "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5", "BIG-5": "big5",
}


class MessageError(ValueError):
    """The bytes are not an HL7 v2 message (no MSH, bad encoding characters): rejected with AR; ``field``: the
    MSH field at fault when there is one (MSH-2)."""

    def __init__(self, text: str, field: int = 0) -> None:
        super().__init__(text)
        self.field = field


def declared_charset(raw: bytes) -> str:
    """MSH-18 as sent, upper case ("" when absent; read before decoding: MSH itself is ASCII)."""
    first = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(first) < 8 or not first.startswith(b"MSH"):
        return ""
    fields = first.split(first[3:4])
    return fields[17].split(first[4:5])[0].decode("ascii", "replace").strip().upper() if len(fields) > 17 else ""


def detect_charset(raw: bytes) -> str:
    """The codec named by MSH-18; UTF-8 when none or one we do not know is named."""
    return CHARSETS.get(declared_charset(raw), "utf-8")


def decode(raw: bytes) -> str:
    """The message text. Bytes invalid for the charset are kept (read as Latin-1) so the message can be
    stored as received; ``charset_error`` says whether the declared charset was broken."""
    codec = detect_charset(raw)
    try:
        return raw.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def charset_error(raw: bytes) -> str | None:
    """Why the bytes are not valid in the character set MSH-18 declares; None when they are, or when MSH-18
    names none (senders that declare nothing are read leniently, UTF-8 else Latin-1)."""
    name = declared_charset(raw)
    codec = CHARSETS.get(name)
    if codec is None:
        return None
    try:
        raw.decode(codec)
    except UnicodeDecodeError as exc:
        return f"byte {exc.start} (0x{raw[exc.start]:02X}) is not valid {name}, the character set MSH-18 declares"
    return None


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""  # v2.7+: the fifth encoding character

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


_FORMATTING = {".br": "\n", ".sp": "\n", ".fi": "", ".nf": "", ".in": "", ".ti": "", ".sk": " ", ".ce": "\n",
               "H": "", "N": ""}


def unescape(value: str, enc: Encoding, formatted: bool = True) -> str:
    """Resolve escape sequences (2.7 section 2.7): delimiters, hex, and FT formatting commands."""
    esc = enc.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    pos = 0
    while True:
        start = value.find(esc, pos)
        if start < 0:
            out.append(value[pos:])
            return "".join(out)
        end = value.find(esc, start + 1)
        if end < 0:
            out.append(value[pos:])
            return "".join(out)
        out.append(value[pos:start])
        seq = value[start + 1:end]
        out.append(_escape_value(seq, enc, formatted, value[start:end + 1]))
        pos = end + 1


def _escape_value(seq: str, enc: Encoding, formatted: bool, literal: str) -> str:
    simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition, "E": enc.escape,
              "P": enc.truncation}
    if seq in simple:
        return simple[seq]
    if seq.startswith("X") and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", seq):
        data = bytes.fromhex(seq[1:])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if seq.startswith(("C", "M", "Z")):
        return ""  # charset switches and locally defined escapes carry no text
    command = seq.split()[0] if seq else seq
    for key, text in _FORMATTING.items():
        if command.startswith(key):
            return text if formatted else ""
    return literal


def escape(value: str, enc: Encoding) -> str:
    """Escape text for an ER7 field (used for ACK text)."""
    out = value.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    for char, code in ((enc.field, "F"), (enc.component, "S"), (enc.subcomponent, "T"), (enc.repetition, "R")):
        out = out.replace(char, f"{enc.escape}{code}{enc.escape}")
    return out.replace("\r", " ").replace("\n", f"{enc.escape}.br{enc.escape}")


@dataclass
class Segment:
    id: str
    fields: list[str]  # fields[n] is SEG-n raw (escaped) text; fields[0] is the segment id
    index: int  # position in the message
    enc: Encoding = field(default_factory=Encoding)
    occurrence: int = 1  # 1-based count of this segment id so far (ERR-2.2 "segment sequence")

    def raw(self, seq: int) -> str:
        return self.fields[seq] if 0 < seq < len(self.fields) else ""

    def repetitions(self, seq: int) -> list[str]:
        raw = self.raw(seq)
        if self.id == "MSH" and seq <= 2:
            return [raw] if raw else []
        return raw.split(self.enc.repetition) if raw else []

    def get(self, seq: int, rep: int = 0, comp: int = 1, sub: int = 1, *, formatted: bool = True) -> str:
        """One value, unescaped; "" when absent. ``comp``/``sub`` are 1-based."""
        if self.id == "MSH" and seq <= 2:
            return self.raw(seq)
        reps = self.repetitions(seq)
        if rep >= len(reps):
            return ""
        return component(reps[rep], self.enc, comp, sub, formatted=formatted)

    def __str__(self) -> str:
        return f"{self.id}[{self.index}]"


def component(raw_rep: str, enc: Encoding, comp: int = 1, sub: int = 1, *, formatted: bool = True) -> str:
    comps = raw_rep.split(enc.component)
    if comp > len(comps):
        return ""
    subs = comps[comp - 1].split(enc.subcomponent)
    if sub > len(subs):
        return ""
    value = subs[sub - 1]
    return "" if value == '""' else unescape(value, enc, formatted)


@dataclass
class V2Message:
    segments: list[Segment]
    enc: Encoding
    text: str

    def first(self, seg_id: str) -> Segment | None:
        for seg in self.segments:
            if seg.id == seg_id:
                return seg
        return None

    def all(self, seg_id: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.id == seg_id]

    def nearest(self, seg_id: str, before: Segment) -> Segment | None:
        """The closest ``seg_id`` at or before ``before`` (its group parent), else the first in the message."""
        for seg in reversed(self.segments[: before.index + 1]):
            if seg.id == seg_id:
                return seg
        return self.first(seg_id)

    @property
    def msh(self) -> Segment:
        return self.segments[0]


def parse_msh(text: str) -> V2Message | None:
    """Only the MSH segment of a message the whole of which could not be parsed (to answer its sender with
    MSA-2 and swapped MSH-3/4 and 5/6 all the same); None when MSH itself cannot be read."""
    first = re.split(r"\r\n|\r|\n", text.lstrip("\ufeff\r\n "), maxsplit=1)[0]
    try:
        return parse(first)
    except MessageError as exc:
        if exc.field != 2 or len(first) < 8:
            return None
    # MSH-2 unusable: the other fields are still read (with the standard delimiters) to answer the sender.
    sep = first[3]
    fields = first.split(sep)
    try:
        return parse(sep.join(["MSH", "^~\\&", *fields[2:]]))
    except MessageError:
        return None


_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")


def _lenient_msh2(chars: str, text: str) -> str:
    """MSH-2 variants real senders send where HAPI reads them and no meaning is lost: ``^~\\\\&`` (the escape
    character doubled, as a source-code string literal leaves it) is ``^~\\&``; three characters (no
    subcomponent separator, as some 2.1-2.3 senders write it) get ``&`` when the message holds no ``&``
    (else which ``&`` separates what cannot be known, and the message is refused naming MSH-2)."""
    if len(chars) == 5 and chars[2] == chars[3] == "\\":
        return chars[:3] + chars[4]
    if len(chars) == 3 and "&" not in text and "&" not in chars:
        return chars + "&"
    return chars


def parse(text: str) -> V2Message:
    """Tokenise an ER7 message. Segment terminators CR, LF or CRLF are all accepted (files use LF)."""
    text = text.lstrip("\ufeff\r\n ")
    if not text.startswith("MSH") or len(text) < 8:
        raise MessageError("The message does not start with an MSH segment")
    sep = text[3]
    msh2_end = text.find(sep, 4)
    if msh2_end < 0:
        raise MessageError("MSH has no encoding characters", 2)
    chars = _lenient_msh2(text[4:msh2_end], text)
    if (len(chars) < 4 or len(set(chars + sep)) != len(chars) + 1 or sep.isalnum() or not sep.isprintable()
            or any(c.isalnum() or not c.isprintable() for c in chars)):
        raise MessageError(f"MSH-2 encoding characters {chars[:10]!r} are invalid: four distinct delimiters "
                           "(component, repetition, escape, subcomponent) are required", 2)
    enc = Encoding(sep, chars[0], chars[1], chars[2], chars[3], chars[4] if len(chars) > 4 else "")
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        parts = line.split(sep)
        seg_id = parts[0]
        if not _SEGMENT_ID.fullmatch(seg_id):
            raise MessageError(f"Segment {len(segments) + 1} has an invalid segment id {seg_id[:10]!r}")
        if seg_id == "MSH":
            if segments:
                raise MessageError("A second MSH inside one message: send one message per MLLP frame")
            parts = ["MSH", sep, *parts[1:]]  # MSH-1 is the separator itself
        elif seg_id in ("FHS", "BHS", "FTS", "BTS"):
            raise MessageError("FHS/BHS inside a message: a batch must start with FHS or BHS")
        seen[seg_id] = seen.get(seg_id, 0) + 1
        segments.append(Segment(seg_id, parts, len(segments), enc, seen[seg_id]))
    return V2Message(segments, enc, text)

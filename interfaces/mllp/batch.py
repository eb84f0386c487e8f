"""HL7 batches (FHS/BHS ... BTS/FTS, v2 section 2.10.3) in one MLLP frame: each message on its own, one reply;
and files of messages or batches (``fhir-server hl7 load FILE``), read the same way.

Every message of the batch goes through the pipeline exactly as if it had come alone (stored, de-duplicated
by control id, mapped, acknowledged as its MSH-15/16 ask); the reply is one batch holding those ACKs, with
BHS-12 naming the batch it answers and BTS-1 counting its messages.
"""

from __future__ import annotations

import itertools
import logging
import re
from datetime import UTC, datetime

from interfaces.mllp.pipeline import Hl7Pipeline
from interfaces.mllp.store import REJECTED
from mappings.hl7v2.message import decode

_counter = itertools.count(1)
log = logging.getLogger(__name__)


def is_batch(frame: bytes) -> bool:
    return frame.lstrip(b"\r\n ").removeprefix(b"\xef\xbb\xbf").startswith((b"FHS", b"BHS"))


def split_batch(text: str) -> tuple[list[str], list[str], list[str]]:
    """(FHS/BHS header segments, messages as text, segments found outside any message)."""
    headers: list[str] = []
    messages: list[list[str]] = []
    stray: list[str] = []
    current: list[str] | None = None
    for line in re.split(r"\r\n|\r|\n", text.strip("\ufeff\r\n ")):
        tag = line[:3]
        if not line.strip():
            continue
        if tag in ("FHS", "BHS", "BTS", "FTS"):
            current = None
            if tag in ("FHS", "BHS"):
                headers.append(line)
            continue
        if tag == "MSH":
            current = [line]
            messages.append(current)
        elif current is not None:
            current.append(line)
        else:
            stray.append(line)
    return headers, ["\r".join(m) + "\r" for m in messages], stray


def _field(segment: str, seq: int) -> str:
    # FHS/BHS are laid out like MSH: field 1 is the separator itself.
    sep = segment[3:4] or "|"
    parts = segment.split(sep)
    return parts[seq - 1] if 0 < seq <= len(parts) else ""


def handle_batch(pipeline: Hl7Pipeline, raw: bytes) -> str:
    # Split on the bytes (read as Latin-1: one character per byte, so every message keeps its exact bytes),
    # then each message is decoded, and its bytes checked, by its own MSH-18, as if it had come alone.
    headers, messages, stray = split_batch(raw.lstrip(b"\r\n ").removeprefix(b"\xef\xbb\xbf").decode("latin-1"))
    headers = [decode(h.encode("latin-1")) for h in headers]
    acks: list[str] = []
    for message in messages:
        acks.extend(pipeline.handle(message.encode("latin-1")))
    fhs = next((h for h in headers if h.startswith("FHS")), None)
    bhs = next((h for h in headers if h.startswith("BHS")), headers[0] if headers else "BHS|^~\\&")
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    sep = bhs[3:4] or "|"
    enc = _field(bhs, 2) or "^~\\&"
    comment = _not_processed(pipeline, bhs, stray) if stray else ""

    def envelope(tag: str, source: str) -> str:
        # Sender and receiver swapped; field 10 the comment, 11 our control id, 12 the one we answer.
        return sep.join([tag, enc, _field(source, 5), _field(source, 6), _field(source, 3), _field(source, 4),
                         now, "", "", comment if tag == "BHS" else "", f"B{next(_counter)}", _field(source, 11)])

    out = [envelope("BHS", bhs), *(a.rstrip("\r") for a in acks), f"BTS{sep}{len(acks)}"]
    if fhs is not None:
        out = [envelope("FHS", fhs), *out, f"FTS{sep}1"]
    return "\r".join(out) + "\r"


def _not_processed(pipeline: Hl7Pipeline, bhs: str, stray: list[str]) -> str:
    """Segments outside any message (a batch cut by a stray BHS, a message without its MSH): never dropped
    silently. Stored as a rejected entry under the batch's sender (``hl7 stats --errors`` shows it) and named
    in the reply's BHS-10 (batch comment); the batch's whole messages are processed all the same."""
    ids = ", ".join(dict.fromkeys(line[:3] for line in stray))
    reason = (f"{len(stray)} segment(s) outside any message ({ids}) not processed: each message of a batch "
              "must start with MSH")
    sender = f"{_field(bhs, 3)}|{_field(bhs, 4)}"
    pipeline.store.receive(sender=sender, control_id=None, message_type="", version="", raw="\r".join(stray) + "\r",
                           status=REJECTED, error=reason)
    log.warning("hl7 batch from %s: %d segments outside any message, stored as rejected", sender, len(stray))
    sep = bhs[3:4] or "|"
    return reason.replace(sep, " ").replace("^", " ")


def load_file(pipeline: Hl7Pipeline, raw: bytes) -> dict[str, object]:
    """A file of messages (one after another, or a batch/file envelope; CR, LF or CRLF segment ends): each
    message through the pipeline as if it had come over MLLP. What each got (MSA-1 of its last ACK; "none"
    when MSH-15/16 asked for no ACK: ``hl7 stats`` has its outcome), and what was not processed."""
    text = raw.lstrip(b"\r\n ").removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    headers, messages, stray = split_batch(text)
    outcomes: dict[str, int] = {}
    for message in messages:
        acks = pipeline.handle(message.encode("latin-1"))
        code = _msa_code(acks[-1]) if acks else "none"
        outcomes[code] = outcomes.get(code, 0) + 1
    out: dict[str, object] = {"messages": len(messages), "outcomes": outcomes}
    if stray:
        bhs = next((h for h in headers if h.startswith("BHS")), headers[0] if headers else "BHS|^~\\&")
        out["notProcessed"] = _not_processed(pipeline, bhs, stray)
    return out


def _msa_code(ack: str) -> str:
    for seg in ack.split("\r"):
        if seg.startswith("MSA") and len(seg) > 4:
            return seg.split(seg[3])[1]
    return "none"

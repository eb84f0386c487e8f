"""HL7 v2 coverage: every sample message under /work/shared/samples/hl7v2 (several vendors' and libraries'
test messages) sent to a real ``fhir-server serve`` MLLP listener (SQLite), each with a fresh control id;
prints the accept rate (every ACK AA/CA, the application ACK included when one is asked for) of the issue's
message families (the goal set) and of the other types apart, with what each message not accepted got (its
ERR: severity, location, text), and writes the ``hl7-coverage`` section of RESULTS.md.

    .venv/bin/python bench/hl7_coverage.py [--samples DIR] [--no-write] [--verbose]

A file may hold several messages (one per MSH) with CR, LF or CRLF segment ends; lines that are not segments
(the files' own comments, such as HAPI's "// *** Original message") are dropped. A batch file (starting with
FHS or BHS) goes as one MLLP frame, as a sender would send it: the server splits it (v2 2.10.3) and answers
with a batch of ACKs. XML files are skipped (ER7 only). Messages that are acknowledgements or responses
themselves (ACK, RSP, ORL, ERP, ...) are counted apart: nobody sends them to a server as new information.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LOOPBACK, fhir_server, free_port, git_commit, load_average, log, table, write_section

SAMPLES = Path("/work/shared/samples/hl7v2")
START, END = b"\x0b", b"\x1c\x0d"
RESPONSES = {"ACK", "RSP", "ORL", "ERP", "ORR", "OSR", "RRE", "RRD", "RRA", "RRG", "RRI", "RPA", "RPI", "MFK", "ORF"}


def split_messages(raw: bytes) -> list[bytes]:
    """The messages of a sample file, each with CR segment ends."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    messages: list[list[bytes]] = []
    current: list[bytes] | None = None
    for seg in text.split(b"\r"):
        seg = seg.strip(b" \t\x0b\x1c")
        if not re.match(rb"[A-Z][A-Z0-9]{2}[^A-Za-z0-9 ]", seg):  # blank lines and the files' own comments
            continue
        if seg.startswith(b"MSH"):
            current = [seg]
            messages.append(current)
        elif seg[:3] in (b"FHS", b"BHS", b"BTS", b"FTS"):
            current = None
        elif current is not None:
            current.append(seg)
    return [b"\r".join(m) + b"\r" for m in messages]


def field(msh: bytes, seq: int) -> bytes:
    """MSH-n of a message (MSH-1 is the field separator itself)."""
    sep = msh[3:4]
    parts = msh.split(sep)
    return parts[seq - 1] if len(parts) >= seq else b""


def with_control_id(message: bytes, control_id: str) -> bytes:
    msh, _, rest = message.partition(b"\r")
    sep = msh[3:4]
    parts = msh.split(sep)
    while len(parts) < 12:
        parts.append(b"")
    parts[9] = control_id.encode()
    return sep.join(parts) + b"\r" + rest


def family(message: bytes) -> str:
    msh = message.split(b"\r", 1)[0]
    if len(msh) < 8:
        return "(none)"
    comp = msh[4:5]
    kind = field(msh, 9).split(comp)[0].decode("latin-1").strip()
    return kind or "(none)"


def asking_for_an_outcome(message: bytes) -> bytes:
    """A message whose MSH-15/16 both say NE gets no ACK at all, so its outcome could not be seen: it is sent
    with MSH-16 AL (the only change the bench makes besides MSH-10)."""
    msh, _, rest = message.partition(b"\r")
    sep = msh[3:4]
    parts = msh.split(sep)
    if len(parts) > 15 and parts[14].strip() == b"NE" and parts[15].strip() == b"NE":
        parts[15] = b"AL"
    return sep.join(parts) + b"\r" + rest


def exchange(port: int, message: bytes) -> list[str]:
    """Send one message, read every ACK it gets (accept + application ACK in enhanced mode)."""
    wanted = 1
    msh = message.split(b"\r", 1)[0]
    accept, app = field(msh, 15).strip(), field(msh, 16).strip()
    if accept or app:  # enhanced mode: an accept ACK unless NE, then an application ACK unless NE
        wanted = (accept != b"NE") + (app not in (b"NE", b"ER"))
        wanted = max(wanted, 1)
    acks: list[str] = []
    buf = b""
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(START + message + END)
        sock.settimeout(30)  # a cold server's first Quantity loads the UCUM registry: slow, not a refusal
        while len(acks) < wanted:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            while END in buf:
                frame, _, buf = buf.partition(END)
                acks.append(frame.lstrip(START).decode("utf-8", "replace"))
    return acks


def ack_codes(acks: list[str]) -> list[str]:
    codes = []
    for ack in acks:
        for seg in ack.split("\r"):
            if seg.startswith("MSA"):
                codes.append(seg.split(seg[3])[1] if len(seg) > 4 else "")
    return codes


def ack_errors(acks: list[str]) -> list[str]:
    """Each ERR of the ACKs as "severity location: text" (2.5+: ERR-4, ERR-2, ERR-8; before: ERR-1 and MSA-3)."""
    out = []
    for ack in acks:
        segs = ack.split("\r")
        msa = next((s.split(s[3]) for s in segs if s.startswith("MSA") and s.count(s[3]) >= 3), ["", "", "", ""])
        msa_text = msa[3]
        # ERR-1 (before 2.5) has no severity: on an accepted message it can only be a warning
        old_severity = "W" if msa[1] in ("AA", "CA") else "E"
        for seg in segs:
            if not seg.startswith("ERR") or len(seg) < 5:
                continue
            f = seg.split(seg[3]) + [""] * 9
            if f[2] or f[3]:  # ERL, CWE, severity, text
                out.append(f"{f[4] or 'E'} {'-'.join(f[2].split('^')[:3])}: {f[8] or f[3]}")
            else:  # ERR-1 (ELD): segment ^ sequence ^ field ^ code&text&table
                eld = f[1].split("^")
                out.append(f"{old_severity} {'-'.join(eld[:3])}: {msa_text or (eld[3] if len(eld) > 3 else '')}")
    return [_unescaped(e) for e in out]


def _unescaped(text: str) -> str:
    """The ACK's text with its delimiter escapes read back (\\S\\ is ^, ...), for the report."""
    for code, char in (("S", "^"), ("T", "&"), ("R", "~"), ("F", "|"), ("E", "\\")):
        text = text.replace(f"\\{code}\\", char)
    return text


def accepted(codes: list[str]) -> bool:
    return bool(codes) and all(c in ("AA", "CA") for c in codes)


def is_batch_file(raw: bytes) -> bool:
    return raw.lstrip(b"\r\n \xef\xbb\xbf").startswith((b"FHS", b"BHS"))


def batch_frame(raw: bytes, first: int) -> tuple[bytes, list[bytes]]:
    """A batch file as one frame, as a sender would send it (FHS/BHS kept, the server splits it), each
    message with a fresh control id; and its messages in order (for their families)."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    out: list[bytes] = []
    messages: list[bytes] = []
    n = first
    for seg in text.split(b"\r"):
        seg = seg.strip(b" \t\x0b\x1c")
        if not re.match(rb"[A-Z][A-Z0-9]{2}[^A-Za-z0-9 ]", seg):
            continue
        if seg.startswith(b"MSH"):
            seg = asking_for_an_outcome(with_control_id(seg + b"\r", f"COV{n:05d}")).rstrip(b"\r")
            messages.append(seg)
            n += 1
        out.append(seg)
    return b"\r".join(out) + b"\r", messages


def batch_exchange(port: int, frame: bytes) -> str:
    """Send one batch, read its one reply (a batch of ACKs)."""
    buf = b""
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(START + frame + END)
        while END not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.partition(END)[0].lstrip(START).decode("utf-8", "replace")


def split_reply(reply: str) -> tuple[str, dict[str, list[str]]]:
    """A batch reply's BHS-10 (comment) and its ACKs by the control id they answer (MSA-2)."""
    comment = ""
    messages: list[list[str]] = []
    for seg in reply.split("\r"):
        if seg.startswith("BHS") and len(seg) > 3:
            fields = seg.split(seg[3])
            comment = fields[9] if len(fields) > 9 else ""
        elif seg.startswith("MSH"):
            messages.append([seg])
        elif seg and not seg.startswith(("BTS", "FTS", "FHS")) and messages:
            messages[-1].append(seg)
    acks: dict[str, list[str]] = defaultdict(list)
    for ack in messages:
        msa = next((s.split(s[3]) for s in ack if s.startswith("MSA") and len(s) > 4), [])
        acks[msa[2] if len(msa) > 2 else ""].append("\r".join(ack))
    return comment, acks


# The sample libraries' own tests of input a parser must refuse: not messages a sender would send. Counted in
# the goal set all the same; the report also gives the rate without them, listing each with what it got.
INVALID_BY_DESIGN = {
    "test_parser-06-ADT_A01_ADT_A01.hl7": "hl7apy's MSH parsing test: an MSH alone, no PID",
    "test_parser-07-ADT_A01_ADT_A01.hl7": "hl7apy's MSH parsing test: an MSH alone, no PID",
    "test_parser-13-ADT_A01_ADT_A01.hl7": "hl7apy's MSH parsing test: an MSH alone, no PID",
    "test_parser-09-ADT_A01_ADT_A01.hl7": "hl7apy's test of invalid encoding characters (MSH-2 ^&&^)",
    "test_parser-10-ADT_A01_ADT_A01.hl7": "hl7apy's test of invalid encoding characters (MSH-2 ^&&^##)",
    "sample_bad_batch1.hl7": "python-hl7's malformed batch: a BHS inside the message cuts it after EVN",
    "sample_bad_file1.hl7": "python-hl7's malformed file: a BHS inside the message cuts it after EVN",
    "sample_bad_file2.hl7": "python-hl7's malformed file: an FHS inside the message cuts it after EVN",
}

GOAL = ("ADT", "ORU", "OUL", "ORM", "OML", "OMG", "SIU", "MDM", "DFT", "VXU", "RDE", "RDS", "BAR", "REF", "PPR", "MFN")


@dataclass
class Outcome:
    name: str  # file#n
    event: str
    kind: str  # MSH-9.1
    codes: list[str]
    errors: list[str]

    @property
    def accepted(self) -> bool:
        return accepted(self.codes)


def run(samples: Path, verbose: bool) -> tuple[list[Outcome], Counter[str], list[str]]:
    outcomes: list[Outcome] = []
    responses: Counter[str] = Counter()
    notes: list[str] = []
    files = sorted(p for p in samples.rglob("*") if p.is_file() and p.suffix != ".xml" and p.name != "LICENSE")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"sqlite:///{tmp}/fhir.db"
        with fhir_server(url, 1, extra_env={"FHIR_MLLP_PORT": str(port), "FHIR_MLLP_HOST": LOOPBACK,
                                            "FHIR_OUTBOX_DISPATCHER": "false"}):
            n = 0
            for path in files:
                raw = path.read_bytes()
                name = f"{path.parent.name}/{path.name}"
                if is_batch_file(raw):  # one frame, split by the server (v2 2.10.3)
                    frame, messages = batch_frame(raw, n + 1)
                    comment, acks = split_reply(batch_exchange(port, frame))
                    if comment:
                        notes.append(f"{name} (batch): BHS-10 of the reply: {comment}")
                    for message in messages:
                        n += 1
                        got = acks.get(f"COV{n:05d}", [])
                        outcomes.append(Outcome(f"{name}#{n}", field(message, 9).decode("latin-1"),
                                                family(message), ack_codes(got), ack_errors(got)))
                    if not messages:
                        notes.append(f"{name} (batch): no MSH at all: nothing to process")
                    continue
                for message in split_messages(raw):
                    n += 1
                    kind = family(message)
                    if kind in RESPONSES:
                        responses[kind] += 1
                        continue
                    acks = exchange(port, asking_for_an_outcome(with_control_id(message, f"COV{n:05d}")))
                    outcomes.append(Outcome(f"{name}#{n}", field(message.split(b"\r", 1)[0], 9).decode("latin-1"),
                                            kind, ack_codes(acks), ack_errors(acks)))
                    if verbose:
                        o = outcomes[-1]
                        log(f"{o.name} {o.event}: {'/'.join(o.codes)} {' | '.join(o.errors)}")
    return outcomes, responses, notes


def report(outcomes: list[Outcome], goal: bool) -> tuple[str, int, int]:
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        if (o.kind in GOAL) == goal:
            by_kind[o.kind]["accepted" if o.accepted else "refused"] += 1
    rows = []
    total_ok = total = 0
    for kind in sorted(by_kind):
        c = by_kind[kind]
        sent = c["accepted"] + c["refused"]
        total_ok += c["accepted"]
        total += sent
        rows.append((kind, sent, c["accepted"], c["refused"], f"{100 * c['accepted'] / sent:.0f}%"))
    rows.append(("all", total, total_ok, total - total_ok, f"{100 * total_ok / total:.0f}%" if total else "-"))
    return table(["family", "sent", "accepted", "not accepted", "accept rate"], rows), total_ok, total


def describe(o: Outcome) -> str:
    return f"{o.name} {o.event or '(empty MSH-9)'} -> {'/'.join(o.codes) or 'no ACK'}" + \
        (f": {'; '.join(dict.fromkeys(o.errors))}" if o.errors else "")


HISTORY = ("Before issue 14 (commit 249e059): 29 of 82 accepted (35%). After h-hl7cov: 46 (56%); after h-law: 50 "
           "(61%) (every message of every family counted, batch files split by the bench itself).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    log(f"sending the samples under {args.samples}")
    outcomes, responses, notes = run(args.samples, args.verbose)
    goal_table, ok, total = report(outcomes, True)
    fixtures = [o for o in outcomes if o.kind in GOAL and o.name.split("/")[-1].split("#")[0] in INVALID_BY_DESIGN]
    real_ok = ok - sum(o.accepted for o in fixtures)
    real_total = total - len(fixtures)
    absent = [kind for kind in GOAL if not any(o.kind == kind for o in outcomes)]
    other_table, other_ok, other_total = report(outcomes, False)
    refused = [describe(o) for o in outcomes if not o.accepted]
    print(f"goal set: {ok}/{total}; without the libraries' invalid-input tests: {real_ok}/{real_total}\n")
    print(goal_table + "\n\n" + other_table + "\n\nNot accepted:\n" + "\n".join(refused) + "\n" + "\n".join(notes))
    if args.verbose:
        print("\n".join(describe(o) for o in outcomes if o.accepted and o.errors))
    if args.no_write:
        return
    warned = [describe(o) for o in outcomes if o.accepted and o.errors]
    body = (f"## HL7 v2 coverage (`bench/hl7_coverage.py`)\n\n"
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {git_commit()}, load average {load_average()}. "
            f"Every sample message under `{args.samples}` (hapi-hl7v2, hl7apy, linuxforhealth, python-hl7): "
            f"{len(outcomes)} messages sent, {sum(responses.values())} responses not sent (ACK/RSP/ORL/ERP: nobody "
            "sends them as new information). A real `fhir-server serve` (SQLite) with its MLLP listener; one "
            "connection per message, fresh control ids, MSH-16 AL where MSH-15/16 both said NE (so the outcome "
            "is visible); a batch file (FHS/BHS) goes as one frame and the server splits it. Accepted = every "
            "ACK of the message is AA/CA (an AA may carry W warnings: listed below).\n\n"
            f"**Goal set** (the issue's families {', '.join(GOAL)}): **{ok} of {total} accepted "
            f"({100 * ok / max(total, 1):.0f}%)**; without the {len(fixtures)} inputs the sample libraries wrote "
            f"to test that a parser refuses them (listed below with what they got): **{real_ok} of {real_total} "
            f"({100 * real_ok / max(real_total, 1):.0f}%)**. Goal families with no sample here (covered by the "
            f"golden files under tests/golden/hl7v2 only): {', '.join(absent) or 'none'}.\n\n{goal_table}\n\n"
            f"Other message types (not in the goal; {other_ok} of {other_total} accepted):\n\n{other_table}\n\n"
            f"{HISTORY}\n\nNot accepted, with what each got (ERR: severity, location, text):\n\n"
            + "\n".join(f"- {describe(o)}" + (f" ({INVALID_BY_DESIGN[f]})" if (f := o.name.split("/")[-1].split("#")[0])
                                                 in INVALID_BY_DESIGN else "") for o in outcomes if not o.accepted)
            + ("\n\nBatch replies:\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")
            + ("\n\nAccepted with warnings:\n\n" + "\n".join(f"- {w}" for w in warned) if warned else ""))
    write_section("hl7-coverage", body)


if __name__ == "__main__":
    main()

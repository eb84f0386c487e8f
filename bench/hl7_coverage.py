"""HL7 v2 coverage: every sample message under /work/shared/samples/hl7v2 (several vendors' and libraries'
test messages) sent to a real ``fhir-server serve`` MLLP listener (SQLite), each with a fresh control id;
prints the accept rate (AA/CA, and for enhanced mode the application ACK when one is asked for) by message
family and writes the ``hl7-coverage`` section of RESULTS.md.

    .venv/bin/python bench/hl7_coverage.py [--samples DIR] [--no-write] [--verbose]

A file may hold several messages (one per MSH; batch envelopes FHS/BHS/BTS/FTS are dropped, each message
goes alone) with CR, LF or CRLF segment ends; lines that are not segments (the files' own comments, such as
HAPI's "// *** Original message") are dropped. XML files are skipped (ER7 only). Messages that are
acknowledgements or query responses themselves (ACK, RSP, ORL) are counted apart: nobody sends them to a
server as new information.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LOOPBACK, fhir_server, free_port, log, table, write_section

SAMPLES = Path("/work/shared/samples/hl7v2")
START, END = b"\x0b", b"\x1c\x0d"
# Measured on the code before issue 14 (commit 249e059), same samples and method.
BEFORE = "Before issue 14 (commit 249e059): 29 of 82 accepted (35%), see RESULTS.md."
RESPONSES = {"ACK", "RSP", "ORL", "ORR", "OSR", "RRE", "RRD", "RRA", "RRG", "RRI", "RPA", "RPI", "MFK", "ORF"}


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
        msa_text = next((s.split(s[3])[3] for s in segs if s.startswith("MSA") and s.count(s[3]) >= 3), "")
        for seg in segs:
            if not seg.startswith("ERR") or len(seg) < 5:
                continue
            f = seg.split(seg[3]) + [""] * 9
            if f[2] or f[3]:  # ERL, CWE, severity, text
                out.append(f"{f[4] or 'E'} {'-'.join(f[2].split('^')[:3])}: {f[8] or f[3]}")
            else:  # ERR-1 (ELD): segment ^ sequence ^ field ^ code&text&table
                eld = f[1].split("^")
                out.append(f"E {'-'.join(eld[:3])}: {msa_text or (eld[3] if len(eld) > 3 else '')}")
    return out


def accepted(codes: list[str]) -> bool:
    return bool(codes) and all(c in ("AA", "CA") for c in codes)


def run(samples: Path, verbose: bool) -> tuple[dict[str, Counter[str]], list[str]]:
    by_family: dict[str, Counter[str]] = defaultdict(Counter)
    failures: list[str] = []
    files = sorted(p for p in samples.rglob("*") if p.is_file() and p.suffix != ".xml" and p.name != "LICENSE")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"sqlite:///{tmp}/fhir.db"
        with fhir_server(url, 1, extra_env={"FHIR_MLLP_PORT": str(port), "FHIR_MLLP_HOST": LOOPBACK,
                                            "FHIR_OUTBOX_DISPATCHER": "false"}):
            n = 0
            for path in files:
                for message in split_messages(path.read_bytes()):
                    n += 1
                    kind = family(message)
                    if kind in RESPONSES:
                        by_family[kind]["response"] += 1
                        continue
                    acks = exchange(port, asking_for_an_outcome(with_control_id(message, f"COV{n:05d}")))
                    codes = ack_codes(acks)
                    if verbose:
                        log(f"{path.name} #{n} {kind}: {'/'.join(codes)} {' | '.join(ack_errors(acks))}")
                    outcome = "accepted" if accepted(codes) else "refused"
                    by_family[kind][outcome] += 1
                    if outcome == "refused" or verbose:
                        name = f"{path.parent.name}/{path.name}#{n}"
                        event = field(message.split(b"\r", 1)[0], 9).decode("latin-1")
                        failures.append(f"{name} {event} -> {'/'.join(codes) or 'no ACK'}")
    return by_family, failures


def report(by_family: dict[str, Counter[str]]) -> tuple[str, int, int]:
    rows = []
    total_ok = total = 0
    for kind in sorted(by_family):
        c = by_family[kind]
        sent = c["accepted"] + c["refused"]
        total_ok += c["accepted"]
        total += sent
        rate = f"{100 * c['accepted'] / sent:.0f}%" if sent else "-"
        rows.append((kind, sent, c["accepted"], c["refused"], c["response"], rate))
    rows.append(("all", total, total_ok, total - total_ok, sum(c["response"] for c in by_family.values()),
                 f"{100 * total_ok / total:.0f}%" if total else "-"))
    return table(["family", "sent", "accepted", "refused", "responses (not sent)", "accept rate"], rows), \
        total_ok, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    log(f"sending the samples under {args.samples}")
    by_family, failures = run(args.samples, args.verbose)
    text, ok, total = report(by_family)
    print(text)
    print("\n".join(failures))
    if not args.no_write:
        body = (f"## HL7 v2 coverage (`bench/hl7_coverage.py`){' ' + args.label if args.label else ''}\n\n"
                f"Every sample message under `{args.samples}` (hapi-hl7v2, hl7apy, linuxforhealth, python-hl7),"
                " one MLLP connection each, fresh control ids (and MSH-16 AL where MSH-15/16 both said NE, so the"
                " outcome is visible), `fhir-server serve` on SQLite. Accepted = every ACK is AA/CA."
                f" {ok} of {total} accepted.\n\n{BEFORE}\n\nNow:\n\n{text}\n\nRefused now:\n\n"
                + "\n".join(f"- {f}" for f in failures if "->" in f and not f.endswith(("AA", "CA"))))
        write_section("hl7-coverage", body)


if __name__ == "__main__":
    main()

"""A lab analyser speaking the IHE LAW profile (PaLM TF-2a LAB-27/28/29), as its own process, over real MLLP
sockets both ways; standard library only (it shares no code with the server it talks to).

    python tests/sim/law_analyser.py --server 127.0.0.1:2575 --listen 40123 --barcode TUBE-1 --equipment AN-01^CITYLAB

1. listens on ``--listen`` for the work orders the server pushes (LAB-28 OML^O33), answering ORL^O34 AA;
   prints ``READY`` once listening;
2. asks for the work orders of its tube (LAB-27 QBP^Q11, enhanced mode): expects CA, then RSP^K11 AA with
   QAK-2 OK and the order (OBR-2 placer number);
3. waits for the OML^O33 of that order: SPM-2 and SAC-3 the barcode, ORC-2 = OBR-2 the placer number, TQ1;
4. sends its results (LAB-29 OUL^R22, enhanced mode: CA then AA; no PID, as analysers send them): SPM, SAC,
   OBR/ORC with the placer number, OBX glucose 98 (status F, OBX-18 the analyser); then a QC result (SPM-11 Q,
   original mode: AA); then the correction (OBX-11 C, glucose 102: AA).
Every ACK is checked. Prints one JSON line of what it saw and exits 0; on any failed check prints
``FAIL <why>`` and exits 1.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from datetime import UTC, datetime

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


class Failed(Exception):
    pass


def frame(text: str) -> bytes:
    return SB + text.encode("utf-8") + EB + CR


def read_frames(sock: socket.socket, count: int, buf: bytearray) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        end = buf.find(EB + CR)
        if end >= 0:
            start = buf.find(SB)
            out.append(bytes(buf[start + 1:end]).decode("utf-8"))
            del buf[:end + 2]
            continue
        chunk = sock.recv(65536)
        if not chunk:
            raise Failed(f"connection closed after {len(out)} of {count} answers")
        buf.extend(chunk)
    return out


def fields(message: str, seg_id: str) -> list[str]:
    for seg in message.split("\r"):
        if seg.startswith(seg_id + "|"):
            return seg.split("|")
    raise Failed(f"no {seg_id} segment in {message!r}")


def field(message: str, seg_id: str, seq: int) -> str:
    """SEG-seq of the first such segment (MSH counts its field separator as MSH-1)."""
    parts = fields(message, seg_id)
    index = seq - 1 if seg_id == "MSH" else seq
    return parts[index] if index < len(parts) else ""


def check(condition: bool, why: str) -> None:
    if not condition:
        raise Failed(why)


def msh(event: str, control_id: str, enhanced: bool) -> str:
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    modes = "|||AL|AL" if enhanced else ""
    return f"MSH|^~\\&|ANALYSER|CITYLAB|LIS|HOSPITAL|{now}||{event}|{control_id}|P|2.5.1{modes}"


class OrderListener:
    """The analyser's own MLLP port: OML^O33 work orders in, ORL^O34 out."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.orders: list[str] = []
        self.got = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        buf = bytearray()
        with conn:
            while True:
                try:
                    [message] = read_frames(conn, 1, buf)
                except (Failed, OSError):
                    return
                control = field(message, "MSH", 10)
                answer = "\r".join([msh("ORL^O34^ORL_O34", f"ORL-{control}", False), f"MSA|AA|{control}"]) + "\r"
                conn.sendall(frame(answer))
                if field(message, "MSH", 9).startswith("OML^O33"):
                    self.orders.append(message)
                    self.got.set()


def exchange(server: tuple[str, int], message: str, answers: int) -> list[str]:
    with socket.create_connection(server, timeout=60) as sock:
        sock.sendall(frame(message))
        return read_frames(sock, answers, bytearray())


def acks_are(acks: list[str], codes: list[str], control_id: str) -> None:
    got = [field(a, "MSA", 1) for a in acks]
    check(got == codes, f"{control_id}: expected {codes}, got {got}: {acks!r}")
    check(all(field(a, "MSA", 2) == control_id for a in acks), f"{control_id}: MSA-2 does not echo it")


def results(placer: str, barcode: str, equipment: str, control_id: str, value: str, status: str,
            enhanced: bool) -> str:
    return "\r".join([
        msh("OUL^R22^OUL_R22", control_id, enhanced),
        f"SPM|1|{barcode}||SER^Serum^HL70487|||||||P^Patient^HL70369||||||20240305090000+0000",
        f"SAC|||{barcode}",
        f"OBR|1|{placer}||2345-7^Glucose^LN|||||||||||||||||||||{status}",
        f"ORC|SC|{placer}|||CM",
        f"OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL^mg/dL^UCUM|70-99|{'N' if float(value) < 100 else 'H'}|||{status}"
        f"|||20240305101000+0000||||{equipment}",
    ]) + "\r"


def quality_control(equipment: str, control_id: str) -> str:
    return "\r".join([
        msh("OUL^R22^OUL_R22", control_id, False),
        "SPM|1|QC-LOT-778||SER^Serum^HL70487|||||||Q^Control specimen^HL70369",
        "OBR|1||QC-778^CITYLAB|2345-7^Glucose^LN",
        f"OBX|1|NM|2345-7^Glucose^LN||101|mg/dL^mg/dL^UCUM|95-105|N|||F|||20240305095500+0000||||{equipment}",
    ]) + "\r"


def run(args: argparse.Namespace) -> dict[str, object]:
    host, port = args.server.rsplit(":", 1)
    server = (host, int(port))
    listener = OrderListener(args.listen)
    print("READY", flush=True)
    seen: dict[str, object] = {}

    # LAB-27: the tube is on board; which work orders are there for it?
    query = "\r".join([msh("QBP^Q11^QBP_Q11", "Q-1", True),
                       f"QPD|WOS^Work Order Step^IHE_LABTF|QT-1|{args.barcode}", "RCP|I||R"]) + "\r"
    accept, response = exchange(server, query, 2)
    acks_are([accept], ["CA"], "Q-1")
    check(field(response, "MSH", 9) == "RSP^K11^RSP_K11", f"not an RSP^K11: {response!r}")
    acks_are([response], ["AA"], "Q-1")
    check(field(response, "QAK", 2) == "OK", f"QAK-2 is not OK: {response!r}")
    placer = field(response, "OBR", 2)
    check(bool(placer), "the RSP^K11 names no order")
    seen["query"] = {"qak": field(response, "QAK", 2), "placer": placer}

    # LAB-28: the work order itself, pushed by the server to our port.
    check(listener.got.wait(args.timeout), "no OML^O33 work order arrived")
    order = listener.orders[0]
    check(field(order, "SPM", 2).split("^")[0] == args.barcode, f"SPM-2 is not the barcode: {order!r}")
    check(field(order, "SAC", 3).split("^")[0] == args.barcode, f"SAC-3 is not the barcode: {order!r}")
    check(field(order, "ORC", 2) == field(order, "OBR", 2) == placer, f"ORC-2/OBR-2 differ from the RSP: {order!r}")
    check(field(order, "ORC", 1) == "NW", f"ORC-1 is not NW: {order!r}")
    check(bool(field(order, "TQ1", 9)), f"no TQ1-9 priority: {order!r}")
    seen["order"] = {"test": field(order, "OBR", 4), "priority": field(order, "TQ1", 9)}

    # LAB-29: results, a QC run, then a correction of the first result.
    acks_are(exchange(server, results(placer, args.barcode, args.equipment, "R-1", "98", "F", True), 2),
             ["CA", "AA"], "R-1")
    acks_are(exchange(server, quality_control(args.equipment, "QC-1"), 1), ["AA"], "QC-1")
    acks_are(exchange(server, results(placer, args.barcode, args.equipment, "R-2", "102", "C", False), 1),
             ["AA"], "R-2")
    seen["results"] = ["R-1 CA/AA", "QC-1 AA", "R-2 AA"]
    listener.sock.close()
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="host:port of the server's MLLP listener")
    parser.add_argument("--listen", type=int, required=True, help="the analyser's own port (OML^O33 in)")
    parser.add_argument("--barcode", required=True)
    parser.add_argument("--equipment", default="AN-01^CITYLAB", help="OBX-18 equipment instance identifier")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    started = time.monotonic()
    try:
        seen = run(args)
    except (Failed, OSError, ValueError) as exc:
        print(f"FAIL {exc}", flush=True)
        return 1
    print(json.dumps({"ok": True, "seconds": round(time.monotonic() - started, 2), **seen}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

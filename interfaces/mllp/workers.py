"""`fhir-server mllp --workers N`: N listener processes on one port (SO_REUSEPORT), so HL7 v2 traffic can use
more than the one core a Python process gets; the kernel spreads new connections over them.

Each process is a whole listener (its own database pool and in-flight registry). Copies of one message
arriving at two processes are still processed once: the message store's conditional finish lets exactly one
outcome commit, and the other copy answers with it (interfaces/mllp/pipeline.py). Each process finishes
messages left ``received`` at start; two doing so for the same row end the same way.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from types import FrameType

from fhir_server.config import Settings
from interfaces.mllp.listener import DEFAULT_PORT


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the listener stops in order: open connections end, the pool drains


def _child(settings: Settings, port: int) -> None:
    from interfaces.mllp.cli import serve_mllp

    signal.signal(signal.SIGTERM, _interrupt)
    serve_mllp(settings, port, reuse_port=True)


def run_workers(settings: Settings, port: int | None, workers: int) -> int:
    port = port if port is not None else (settings.mllp_port or DEFAULT_PORT)
    if port == 0:
        print("--workers needs a fixed --port: processes can share a port, not an ephemeral one", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_child, args=(settings, port), name=f"mllp-{n}") for n in range(workers)]
    for child in children:
        child.start()
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each stops in order (see _interrupt)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.join()
    failed = [c.exitcode for c in children if c.exitcode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0

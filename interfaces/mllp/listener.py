"""The asyncio MLLP listener: many concurrent connections, idle timeouts, optional TLS.

Each connection reads frames with the pure decoder (framing.py) and handles its messages in order; the
blocking work (database, mapping) runs in a thread pool so the event loop keeps serving other senders.
Messages arriving together on different connections are applied in one transaction (group.py).
ACKs leave only after the pipeline has committed what they say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir_server.config import Settings
from fhir_server.rest.server import FhirServer
from fhir_server.search import ucum
from fhir_server.tenancy.model import DEFAULT
from interfaces.mllp.batch import handle_batch, is_batch
from interfaces.mllp.framing import FrameTooLarge, MllpDecoder, encode
from interfaces.mllp.group import GroupCommitter
from interfaces.mllp.pipeline import Hl7Pipeline
from interfaces.mllp.routing import Router, every_tenant
from interfaces.mllp.store import RECEIVED, MessageStore
from mappings.hl7v2.message import decode, detect_charset

if TYPE_CHECKING:
    from fhir_server.tenancy.stacks import Tenants

log = logging.getLogger(__name__)
DEFAULT_PORT = 2575


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.mllp_tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.mllp_tls_cert, settings.mllp_tls_key)
    if settings.mllp_tls_client_ca:
        ctx.load_verify_locations(settings.mllp_tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True)
class Lane:
    """One hospital's way through the listener: its pipeline (store, mapping, FHIR server), its group commits."""

    pipeline: Hl7Pipeline
    committer: GroupCommitter


class MllpListener:
    def __init__(self, server: FhirServer, *, host: str | None = None, port: int | None = None,
                 pipeline: Hl7Pipeline | None = None, workers: int | None = None,
                 settings: Settings | None = None, reuse_port: bool = False, max_group: int | None = None,
                 group_slots: int | None = None, tenants: Tenants | None = None) -> None:
        """``tenants``: serve every hospital of the server, routed by MSH-5/MSH-6 (interfaces/mllp/routing.py);
        None: ``server``'s hospital alone (a listener per tenant: ``fhir-server --tenant T mllp``)."""
        settings = settings or server.settings
        self.settings = settings
        self.host = host or settings.mllp_host or settings.host
        self.port = port if port is not None else (settings.mllp_port or DEFAULT_PORT)
        self.pipeline = pipeline or Hl7Pipeline(server, MessageStore(server.engine), settings=settings)
        self.executor = ThreadPoolExecutor(max_workers=workers or max(4, settings.db_pool_size),
                                           thread_name_prefix="mllp")
        self.committer = GroupCommitter(self.pipeline, self._run, max_group=max_group or settings.mllp_group_max,
                                        slots=group_slots or settings.mllp_group_slots)
        self._lanes: dict[str, Lane] = {DEFAULT: Lane(self.pipeline, self.committer)}
        self.router = Router(tenants, self._lane_of) if tenants is not None else None
        self.reuse_port = reuse_port  # several processes on one port: the kernel spreads the connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        # Messages a previous run stored but never finished (killed after an accept ACK): apply them now.
        recovered = await self._run(self.pipeline.replay, RECEIVED)
        # The first Quantity indexed loads the UCUM registry (pint: seconds): loaded now, in the background,
        # not inside some analyser's first ACK (which it may time out waiting for).
        self.executor.submit(ucum.canonical, 1.0, "mg")
        if recovered:
            log.info("mllp: finished %s messages left from a previous run", recovered)
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=tls_context(self.settings),
                                                  limit=64 * 1024, reuse_port=self.reuse_port or None)
        tls = " (TLS)" if self.settings.mllp_tls_cert else ""
        log.info("mllp listening on %s:%s%s", self.host, self.bound_port, tls)

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.executor.shutdown(wait=True)
        c = self.committer
        if c.groups:  # how much group commit grouped (messages per transaction), for whoever tunes it
            log.info("mllp: applied %d messages in %d transactions (%.1f per group)", c.messages, c.groups,
                     c.messages / c.groups)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        decoder = MllpDecoder(self.settings.mllp_max_message_bytes)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), self.settings.mllp_idle_timeout_seconds)
                except TimeoutError:
                    log.info("mllp: closing an idle connection")
                    return
                if not chunk:
                    return
                for frame in decoder.feed(chunk):
                    await self._handle(frame, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("mllp: connection ended: %s", type(exc).__name__)
        except Exception:
            # e.g. the database is unreachable: nothing was stored, so no ACK — the sender will re-send.
            log.exception("mllp: a message could not be stored; closing the connection without an ACK")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _lane_of(self, tenant: str) -> Lane:
        lane = self._lanes.get(tenant)
        if lane is None:
            assert self.router is not None
            fhir = self.router.tenants.stack(tenant).fhir
            pipeline = Hl7Pipeline(fhir, MessageStore(fhir.engine), settings=self.settings)
            pipeline.replay(RECEIVED)  # as start() does for the default: what a previous run left unfinished
            lane = self._lanes[tenant] = Lane(pipeline, GroupCommitter(
                pipeline, self._run, max_group=self.committer.max_group, slots=self.committer.slots))
        return lane

    async def _handle(self, frame: bytes | FrameTooLarge, writer: asyncio.StreamWriter) -> None:
        raw = frame.head if isinstance(frame, FrameTooLarge) else frame
        codec = detect_charset(raw)  # answer in the sender's character set (MSH-18)

        async def send(ack: str) -> None:
            writer.write(encode(ack.encode(codec, errors="replace")))
            await writer.drain()

        lane = self._lanes[DEFAULT]
        if self.router is not None:  # the hospital its MSH-6 names (or an AR naming MSH-6)
            routed, refusal = await self._run(self.router.lane, raw, self.pipeline)
            if refusal is not None:
                for ack in refusal:
                    await send(ack)
                return
            lane = routed
        await self._process(lane, frame, send)

    async def _process(self, lane: Lane, frame: bytes | FrameTooLarge, send: Any) -> None:
        pipeline, committer = lane.pipeline, lane.committer

        if isinstance(frame, FrameTooLarge):
            acc = await self._run(pipeline.accept, frame.head, frame.size)
        elif is_batch(frame):  # FHS/BHS: every message on its own, one batch of ACKs back
            await send(await self._run(handle_batch, pipeline, frame))
            return
        else:
            acc = await self._run(pipeline.accept, frame)
            if acc.original is not None:  # a copy of a message still in flight: its outcome answers this one
                # Waiting in a thread of its own, not the pool's: the first copy needs a pool thread to finish.
                acc = await asyncio.to_thread(pipeline.wait_for_original, acc, decode(frame))
                if acc.original is not None:
                    await send(pipeline.still_in_flight(acc))
                    return
        try:
            for ack in acc.immediate:  # duplicates, rejections, and the enhanced-mode accept ACK
                await send(ack)
            if acc.to_process:
                ack = await committer.process(acc)
                if ack:
                    await send(ack)
        finally:
            pipeline.release(acc)  # the connection died before process(): let a re-sent copy run


async def run(settings: Settings, port: int | None = None) -> None:
    """`fhir-server mllp`: the listener alone, until interrupted. Without --tenant it serves every hospital,
    routed by MSH-6 (none routed: the default's alone); with --tenant T, hospital T alone."""
    server = FhirServer(settings)
    tenants = every_tenant(settings, server)
    listener = MllpListener(server, port=port, tenants=tenants)
    try:
        await listener.serve_forever()
    finally:
        await listener.stop()

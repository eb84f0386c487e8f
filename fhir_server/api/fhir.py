"""The FHIR REST endpoint: one catch-all route that turns HTTP into FhirRequest and back.

All FHIR behaviour lives in ``fhir_server.rest``; this file only adapts Starlette to it.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import IO, Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fhir_server.api.auth import bearer_access
from fhir_server.api.http_protocol import INTERRUPT
from fhir_server.api.negotiation import FHIR_JSON, FHIR_XML, XML_BODY_TYPES, negotiate
from fhir_server.api.tenants import stack_of, tenant_urls
from fhir_server.binary import media as binary_media
from fhir_server.errors import NOT_SUPPORTED, STRUCTURE, TOO_COSTLY, FhirError
from fhir_server.formats.xml import XmlError, from_xml, to_xml
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.rest.server import FhirServer
from fhir_server.storage.interrupt import Interrupt, cancellable

router = APIRouter()
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
SPOOL_IN_MEMORY = 1024 * 1024  # raw Binary bodies larger than this are spooled to a temporary file


def render(resp: FhirResponse, *, pretty: bool, head: bool, media_type: str = FHIR_JSON) -> Response:
    headers = dict(resp.headers)
    if resp.stream is not None and head:
        close = getattr(resp.stream, "close", None)
        if close is not None:
            close()
        return Response(status_code=resp.status, headers=headers, media_type=resp.media_type)
    if resp.stream is not None:
        return StreamingResponse(resp.stream, status_code=resp.status, headers=headers,
                                 media_type=resp.media_type or "application/octet-stream")
    if resp.resource is None or resp.status == 304:
        return Response(status_code=resp.status, headers=headers)
    if media_type == FHIR_XML:
        try:
            xml = to_xml(resp.resource)
        except XmlError as exc:  # content XML cannot carry (never expected of stored resources): said in JSON
            outcome = FhirError(406, NOT_SUPPORTED, f"The answer cannot be written as FHIR XML: {exc}",
                                (exc.path,)).outcome()
            return render(FhirResponse(406, outcome), pretty=pretty, head=head)
        return Response(b"" if head else xml, status_code=resp.status, headers=headers,
                        media_type=f"{FHIR_XML}; charset=utf-8")
    if head:
        body = b""
    elif resp.json is not None and not pretty:
        body = resp.json  # serialised once, served many times (metadata)
    else:
        body = orjson.dumps(resp.resource, option=orjson.OPT_INDENT_2 if pretty else 0)
    return Response(body, status_code=resp.status, headers=headers, media_type=f"{FHIR_JSON}; charset=utf-8")


def error_response(exc: FhirError, pretty: bool = False, media_type: str = FHIR_JSON) -> Response:
    return render(FhirResponse(exc.status, exc.outcome()), pretty=pretty, head=False, media_type=media_type)


def xml_body(body: bytes) -> dict[str, Any]:
    """A FHIR XML request body as the JSON form the core works in; 400 naming the element at fault."""
    try:
        return from_xml(body)
    except XmlError as exc:
        raise FhirError(400, STRUCTURE, str(exc), (exc.path,) if exc.path else ()) from None


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FhirError(413, TOO_COSTLY, f"The request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FhirError(413, TOO_COSTLY, f"The request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def spool_body(request: Request, limit: int) -> IO[bytes]:
    """A raw Binary body, copied chunk by chunk to a temporary file (never held whole in memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FhirError(413, TOO_COSTLY, f"The Binary content exceeds {limit} bytes", ("Binary.data",))
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 (closed by caller)
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FhirError(413, TOO_COSTLY, f"The Binary content exceeds {limit} bytes", ("Binary.data",))
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def handle(server: FhirServer, req: FhirRequest, interrupt: Interrupt | None = None) -> FhirResponse:
    """The core's answer; a raw Binary upload is stored first, outside the database transaction."""
    try:
        with server.binary.staged(req) as staged, cancellable(interrupt or Interrupt()):
            return server.handle(staged)
    except FhirError as exc:
        return FhirResponse(exc.status, exc.outcome(), dict(exc.headers))


async def handle_read(request: Request, server: FhirServer, req: FhirRequest) -> FhirResponse:
    """A read (or POST _search): its database work is cancelled if the client disconnects meanwhile."""
    interrupt = request.scope.get("extensions", {}).get(INTERRUPT)
    if interrupt is not None:  # FhirHttpProtocol cancels it when the connection is lost
        return await run_in_threadpool(handle, server, req, interrupt)
    # Another HTTP server: watch for the disconnect here (a task per read, ~0.1 ms of CPU).
    interrupt = Interrupt()
    work = asyncio.ensure_future(run_in_threadpool(handle, server, req, interrupt))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            interrupt.cancel()  # the thread's statement stops now; its answer goes nowhere
        return await work
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    # The body was read already (or there is none): what the server receives next is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def base_url(request: Request, server: FhirServer) -> str:
    """This request's FHIR base: FHIR_BASE_URL or the Host it came to, with its tenant (api/tenants.py)."""
    return tenant_urls(request, server.settings.base_url)[1]


async def fhir_endpoint(request: Request) -> Response:
    path: str = request.path_params.get("path", "")
    server: FhirServer = stack_of(request).fhir
    query = list(request.query_params.multi_items())
    pretty = request.query_params.get("_pretty", "").lower() == "true"
    head = request.method == "HEAD"
    body: bytes | None = None
    body_file: IO[bytes] | None = None
    access = await bearer_access(request, path)  # auth: the token's access context, or a 401
    if isinstance(access, Response):
        return access
    media_type = FHIR_JSON
    resource: dict[str, Any] | None = None
    headers: dict[str, Any] = {k.lower(): v for k, v in request.headers.items()}
    try:
        media_type = negotiate(request.query_params.get("_format"), request.headers.get("accept"),
                               raw_content=binary_media.is_read(request.method, path))
        if binary_media.is_raw_write(request.method, path, request.headers.get("content-type")):
            body_file = await spool_body(request, server.settings.max_binary_bytes)
        elif request.method not in ("GET", "HEAD", "DELETE"):
            body = await read_body(request, server.settings.max_body_bytes)
            if body and binary_media.media_type(headers.get("content-type")) in XML_BODY_TYPES:
                resource = await run_in_threadpool(xml_body, body)  # the core sees JSON only
                headers["content-type"] = FHIR_JSON
    except FhirError as exc:
        return error_response(exc, pretty, media_type)
    req = FhirRequest(request.method, path, query, headers, body, body_file=body_file, resource=resource,
                      base_url=base_url(request, server), access=access,
                      client_address=request.client.host if request.client else None)
    try:
        if request.method in ("GET", "HEAD") or path.rstrip("/").endswith("_search"):
            resp = await handle_read(request, server, req)
        else:  # a write completes (or not) whatever the client does
            resp = await run_in_threadpool(handle, server, req)
    finally:
        if body_file is not None:
            body_file.close()
    return render(resp, pretty=pretty, head=head, media_type=media_type)


# Plain Starlette routes, not FastAPI ones: the endpoint takes the raw request, and FastAPI's per-request
# dependency solving and response handling cost ~0.2 ms CPU on every FHIR call for nothing.
router.add_route("/fhir", fhir_endpoint, methods=METHODS, include_in_schema=False)
router.add_route("/fhir/{path:path}", fhir_endpoint, methods=METHODS, include_in_schema=False)

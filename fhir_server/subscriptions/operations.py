"""Backport IG operations on Subscription instances: ``$status``, ``$events``, ``$get-ws-binding-token``.

Each reads the Subscription through the request's repository first, so the caller's access decides
(a token that may not read the subscription gets 403, an unknown one 404).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from fhir_server.errors import INVALID, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import instant
from fhir_server.subscriptions import spec as specs
from fhir_server.subscriptions import store
from fhir_server.subscriptions.bundles import notification_bundle, status_parameters
from fhir_server.subscriptions.visible import readable_events

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository

OD = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
WS_TOKEN_TTL = timedelta(minutes=10)
WS_PATH = "subscriptions/ws"
EVENTS_PAGE = 1000  # events per $events answer; more are a `next` link away


def _inputs(req: FhirRequest) -> dict[str, str]:
    out = dict(req.query)
    if req.method == "POST" and (req.body or req.resource):
        body = req.json_body()
        for p in body.get("parameter", []) if isinstance(body, dict) else []:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if isinstance(p, dict) and value is not None:
                out[str(p.get("name"))] = str(value)
    return out


def _subscription(repo: Repository, resource_id: str | None) -> specs.SubscriptionSpec:
    if resource_id is None:  # registered per instance; the type level is a clear 400, never a 500
        raise FhirError(400, INVALID, "This operation runs on one Subscription: Subscription/[id]/$...",
                        ("Subscription",))
    return specs.parse(repo.read("Subscription", resource_id).content or {})


def _number(inputs: dict[str, str], name: str) -> int | None:
    text = inputs.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise FhirError(400, INVALID, f"{name} must be an event number", (name,)) from None


def status(req: FhirRequest, repo: Repository, _rtype: str | None, resource_id: str | None) -> FhirResponse:
    sub = _subscription(repo, resource_id)
    since = store.events_since_start(repo.conn, sub.id)
    error = (repo.read("Subscription", sub.id).content or {}).get("error")
    params = status_parameters(sub, base=req.base_url, kind="query-status", events_since=since, events=[],
                               error=error)
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": 1,
              "entry": [{"fullUrl": f"urn:uuid:{params['id']}", "resource": params,
                         "search": {"mode": "match"}}]}
    return FhirResponse(200, bundle)


def events(req: FhirRequest, repo: Repository, _rtype: str | None, resource_id: str | None) -> FhirResponse:
    sub = _subscription(repo, resource_id)
    inputs = _inputs(req)
    since, until = _number(inputs, "eventsSinceNumber"), _number(inputs, "eventsUntilNumber")
    content = inputs.get("content") or sub.content
    if content not in specs.CONTENTS:
        raise FhirError(400, INVALID, f"content must be one of {', '.join(specs.CONTENTS)}", ("content",))
    sub = specs.SubscriptionSpec(**{**sub.__dict__, "content": content})
    # auth: only the events whose focus the caller may read (their ids too are not the caller's to learn)
    page = store.events(repo.conn, sub.id, since, until, limit=EVENTS_PAGE + 1)
    more = len(page) > EVENTS_PAGE
    page = page[:EVENTS_PAGE]
    found, resources = readable_events(repo, page, full=content == "full-resource")
    total = store.events_since_start(repo.conn, sub.id)
    bundle = notification_bundle(sub, base=req.base_url, kind="query-event", events_since=total, events=found,
                                 resources=resources)
    if more:  # a page, never a silent cut: the next one starts after this page's last event number
        query = [("eventsSinceNumber", str(page[-1].number + 1))]
        query += [("eventsUntilNumber", str(until))] if until is not None else []
        query += [("content", content)] if inputs.get("content") else []
        bundle["link"] = [{"relation": "next",
                           "url": f"{req.base_url}/Subscription/{sub.id}/$events?{urlencode(query)}"}]
    return FhirResponse(200, bundle)


def ws_binding_token(req: FhirRequest, repo: Repository, _rtype: str | None,
                     resource_id: str | None) -> FhirResponse:
    sub = _subscription(repo, resource_id)
    if sub.channel_type != "websocket":
        raise FhirError(400, INVALID, "The subscription's channel is not websocket", ("Subscription.channel.type",))
    repo.flush()
    token, expires = store.issue_ws_token(repo.conn, sub.id, WS_TOKEN_TTL, repo.access)  # auth: the binder's
    ws_base = req.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": [
        {"name": "token", "valueString": token},
        {"name": "expiration", "valueDateTime": instant(expires)},
        {"name": "subscription", "valueString": f"Subscription/{sub.id}"},
        {"name": "websocket-url", "valueUrl": f"{ws_base.rstrip('/')}/{WS_PATH}"}]})


def register(server: FhirServer) -> None:
    types = frozenset({"Subscription"})
    ops = server.operations
    ops.register(Operation("status", status, OD + "backport-subscription-status", types=types, instance=True))
    ops.register(Operation("events", events, OD + "backport-subscription-events", types=types, instance=True))
    ops.register(Operation("get-ws-binding-token", ws_binding_token, OD + "backport-subscription-get-ws-binding-token",
                           types=types, instance=True, affects_state=True))

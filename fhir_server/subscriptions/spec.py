"""What a Subscription resource asks for, parsed and checked once: R4 criteria subscriptions and the R4
Subscriptions Backport IG (STU 1.1) topic-based ones (http://hl7.org/fhir/uv/subscriptions-backport/).

R4: ``criteria`` is a search URL (``Observation?code=...``), the payload MIME type decides full resource or
none. Backport: ``criteria`` is a SubscriptionTopic canonical, filters come as ``backport-filter-criteria``
extensions on ``_criteria``, ``backport-payload-content`` on ``_payload`` says empty | id-only | full-resource.
Topics are R4 ``Basic`` resources carrying the R5 cross-version SubscriptionTopic extensions, as the IG's
R4 examples do. Problems are 422 OperationOutcomes naming the element at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, NOT_SUPPORTED, VALUE, FhirError

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
PROFILE = BACKPORT + "backport-subscription"
FILTER_CRITERIA = BACKPORT + "backport-filter-criteria"
PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
HEARTBEAT = BACKPORT + "backport-heartbeat-period"
TIMEOUT = BACKPORT + "backport-timeout"
TOPIC_CODE = ("http://hl7.org/fhir/fhir-types", "SubscriptionTopic")
# The IG's R4 topic examples use the R5 cross-version extensions (and 4.3 ones for resourceTrigger).
TOPIC_EXT = ("http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.",
             "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic.")
CONTENTS = ("empty", "id-only", "full-resource")
CHANNELS = ("rest-hook", "websocket")
MIME_TYPES = ("application/fhir+json", "application/json")
INTERACTIONS = frozenset({"create", "update", "delete"})


def invalid(message: str, element: str, code: str = INVALID) -> FhirError:
    return FhirError(422, code, message, (element,))


@dataclass(frozen=True)
class Trigger:
    """One resource type a subscription listens to: which interactions, which search criteria must hold."""

    resource_type: str
    interactions: frozenset[str]
    params: tuple[tuple[str, str], ...]  # the topic's queryCriteria.current (R4: none)
    filters: tuple[tuple[str, str], ...] = ()  # the subscription's own criteria: they always have to hold
    previous: tuple[tuple[str, str], ...] | None = None  # queryCriteria.previous, on the version replaced
    result_for_create: str | None = None  # test-passes | test-fails: previous criteria on a create
    result_for_delete: str | None = None  # current criteria on a delete (unset: tested on the removed version)
    require_both: bool = False


@dataclass(frozen=True)
class Topic:
    url: str
    triggers: tuple[Trigger, ...]


@dataclass(frozen=True)
class SubscriptionSpec:
    id: str
    status: str
    channel_type: str
    endpoint: str | None
    headers: tuple[tuple[str, str], ...]
    content: str  # empty | id-only | full-resource
    mime_type: str | None
    topic: str | None  # backport: the SubscriptionTopic canonical; None: an R4 criteria subscription
    criteria: str  # R4 search URL, or the topic canonical
    filters: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # backport: (type, params) per filter
    heartbeat: int | None = None  # seconds
    end: datetime | None = None  # Subscription.end: no notifications after it

    @property
    def backport(self) -> bool:
        return self.topic is not None


def _ext(element: dict[str, Any] | None, url: str) -> list[dict[str, Any]]:
    return [e for e in (element or {}).get("extension", []) if isinstance(e, dict) and e.get("url") == url]


def split_query(text: str, element: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``Type?a=1&b=2`` -> (Type, params); the type must be an R4 resource type."""
    rtype, _, query = text.strip().partition("?")
    rtype = rtype.rstrip("/").rsplit("/", 1)[-1]
    if rtype not in resource_types():
        raise invalid(f"'{rtype}' in {element} is not an R4 resource type", element)
    return rtype, tuple(parse_qsl(query, keep_blank_values=True))


def parse(resource: dict[str, Any]) -> SubscriptionSpec:
    channel = resource.get("channel") or {}
    channel_type = channel.get("type")
    if channel_type not in CHANNELS:
        raise invalid(f"Channel type '{channel_type}' is not supported (rest-hook and websocket are)",
                      "Subscription.channel.type", NOT_SUPPORTED)
    endpoint = channel.get("endpoint")
    if channel_type == "rest-hook":
        url = urlsplit(endpoint or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise invalid("A rest-hook channel needs an http(s) endpoint", "Subscription.channel.endpoint")
    headers = []
    for i, header in enumerate(channel.get("header") or []):
        name, colon, value = str(header).partition(":")
        if not colon or not name.strip() or any(c in name + value for c in "\r\n"):
            raise invalid("A channel header is 'Name: value'", f"Subscription.channel.header[{i}]", VALUE)
        headers.append((name.strip(), value.strip()))
    mime = channel.get("payload")
    if mime is not None and mime.split(";")[0].strip() not in MIME_TYPES:
        raise invalid(f"Payload '{mime}' is not supported (application/fhir+json is)", "Subscription.channel.payload",
                      NOT_SUPPORTED)
    criteria = str(resource.get("criteria") or "")
    profiles = (resource.get("meta") or {}).get("profile") or []
    content_ext = _ext(channel.get("_payload"), PAYLOAD_CONTENT)
    is_backport = PROFILE in profiles or bool(content_ext) or bool(_ext(resource.get("_criteria"), FILTER_CRITERIA)) \
        or criteria.startswith(("http://", "https://", "urn:"))
    heartbeat = next((int(e["valueUnsignedInt"]) for e in _ext(channel, HEARTBEAT) if "valueUnsignedInt" in e), None)
    end = None
    if isinstance(resource.get("end"), str):
        try:
            end = datetime.fromisoformat(resource["end"].replace("Z", "+00:00"))
        except ValueError:
            raise invalid("end is not an instant", "Subscription.end", VALUE) from None
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
    base = {"id": str(resource.get("id") or ""), "end": end, "status": str(resource.get("status") or ""),
            "channel_type": channel_type, "endpoint": endpoint, "headers": tuple(headers), "mime_type": mime,
            "criteria": criteria, "heartbeat": heartbeat}
    if not is_backport:
        if "?" not in criteria and criteria.strip() not in resource_types():
            raise invalid("criteria must be a search URL such as 'Observation?code=...'", "Subscription.criteria")
        rtype, params = split_query(criteria, "Subscription.criteria")
        return SubscriptionSpec(**base, content="full-resource" if mime else "empty", topic=None,
                                filters=((rtype, params),))
    content = content_ext[0].get("valueCode") if content_ext else ("full-resource" if mime else "empty")
    if content not in CONTENTS:
        raise invalid(f"Payload content '{content}' is not one of {', '.join(CONTENTS)}",
                      "Subscription.channel.payload.extension")
    filters = []
    for i, ext in enumerate(_ext(resource.get("_criteria"), FILTER_CRITERIA)):
        filters.append(split_query(str(ext.get("valueString") or ""), f"Subscription.criteria.extension[{i}]"))
    return SubscriptionSpec(**base, content=content, topic=criteria, filters=tuple(filters))


def _topic_ext(element: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Cross-version extensions of a topic (full URLs) or of a nested part (relative names)."""
    return [e for e in element.get("extension", []) if isinstance(e, dict)
            and (e.get("url") == name or any(e.get("url") == prefix + name for prefix in TOPIC_EXT))]


def _value(ext: dict[str, Any]) -> Any:
    return next((v for k, v in ext.items() if k.startswith("value")), None)


def _query(text: Any) -> tuple[tuple[str, str], ...]:
    return tuple(parse_qsl(str(text).lstrip("?"), keep_blank_values=True))


def parse_topic(basic: dict[str, Any]) -> Topic | None:
    """A Basic resource carrying a SubscriptionTopic (None when it is not one)."""
    urls = [_value(e) for e in _topic_ext(basic, "url")]
    if not urls or not isinstance(urls[0], str):
        return None
    triggers = []
    for trig in _topic_ext(basic, "resourceTrigger"):
        resources = [_value(e) for e in _topic_ext(trig, "resource")]
        if not resources or not isinstance(resources[0], str):
            continue
        rtype = resources[0].rstrip("/").rsplit("/", 1)[-1]  # "Encounter" or its StructureDefinition URL
        interactions = frozenset(str(_value(e)) for e in _topic_ext(trig, "supportedInteraction")) or INTERACTIONS
        query: dict[str, Any] = {}
        for criteria in _topic_ext(trig, "queryCriteria"):
            for name in ("current", "previous", "resultForCreate", "resultForDelete", "requireBoth"):
                values = [_value(e) for e in _topic_ext(criteria, name)]
                if values and values[0] is not None:
                    query[name] = values[0]
        if rtype in resource_types():
            triggers.append(Trigger(
                rtype, interactions & INTERACTIONS, _query(query["current"]) if "current" in query else (),
                previous=_query(query["previous"]) if "previous" in query else None,
                result_for_create=query.get("resultForCreate"), result_for_delete=query.get("resultForDelete"),
                require_both=query.get("requireBoth") is True))
    return Topic(urls[0], tuple(triggers))


def triggers(spec: SubscriptionSpec, topic: Topic | None) -> list[Trigger]:
    """The (type, interactions, criteria) a subscription fires on: its R4 criteria, or its topic's triggers
    narrowed by its filter criteria for the same type."""
    if not spec.backport:
        rtype, params = spec.filters[0]
        return [Trigger(rtype, INTERACTIONS, (), filters=params)]
    if topic is None:
        return []
    out = []
    for trig in topic.triggers:
        extra = tuple(p for rtype, params in spec.filters if rtype == trig.resource_type for p in params)
        out.append(replace(trig, filters=extra))
    return out

"""Parsing Subscription resources (R4 and Backport IG) and R4 Basic SubscriptionTopics, without a database."""

from __future__ import annotations

import pytest

from fhir_server.errors import FhirError
from fhir_server.subscriptions import spec

R4 = {"resourceType": "Subscription", "id": "s1", "status": "active", "criteria": "Observation?code=http://loinc.org|1-1",
      "channel": {"type": "rest-hook", "endpoint": "https://app.example/hook", "payload": "application/fhir+json",
                  "header": ["Authorization: Bearer x:y"]}}


def topic(prefix: str) -> dict[str, object]:
    return {"resourceType": "Basic", "extension": [
        {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.url", "valueUri": "urn:t"},
        {"url": prefix + "resourceTrigger", "extension": [
            {"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/Encounter"},
            {"url": "supportedInteraction", "valueCode": "update"},
            {"url": "queryCriteria", "extension": [{"url": "current", "valueString": "status=finished"}]}]}]}


def test_r4_criteria_subscription() -> None:
    sub = spec.parse(R4)
    assert not sub.backport and sub.content == "full-resource"
    assert sub.headers == (("Authorization", "Bearer x:y"),)  # only the first colon separates
    assert spec.triggers(sub, None) == [spec.Trigger("Observation", spec.INTERACTIONS, (),
                                                     filters=(("code", "http://loinc.org|1-1"),))]
    assert spec.parse({**R4, "channel": {**R4["channel"], "payload": None}}).content == "empty"  # type: ignore[dict-item]


@pytest.mark.parametrize("prefix", list(spec.TOPIC_EXT))
def test_topics_with_either_cross_version_prefix(prefix: str) -> None:
    parsed = spec.parse_topic(topic(prefix))
    assert parsed == spec.Topic("urn:t", (spec.Trigger("Encounter", frozenset({"update"}), (("status", "finished"),)),))


def test_backport_filters_narrow_the_topic_for_their_type() -> None:
    sub = spec.parse({**R4, "criteria": "urn:t", "_criteria": {"extension": [
        {"url": spec.FILTER_CRITERIA, "valueString": "Encounter?patient=Patient/1"}]},
        "channel": {**R4["channel"],
                    "_payload": {"extension": [{"url": spec.PAYLOAD_CONTENT, "valueCode": "id-only"}]}}})
    assert sub.backport and sub.content == "id-only" and sub.topic == "urn:t"
    [trigger] = spec.triggers(sub, spec.parse_topic(topic(spec.TOPIC_EXT[0])))
    assert trigger.params == (("status", "finished"),) and trigger.filters == (("patient", "Patient/1"),)


def test_basic_without_topic_url_is_no_topic() -> None:
    assert spec.parse_topic({"resourceType": "Basic", "code": {"text": "x"}}) is None


@pytest.mark.parametrize(("change", "element"), [
    ({"criteria": "Observation"}, None),  # a bare type is every change of that type
    ({"channel": {"type": "websocket"}}, None),
    ({"channel": {"type": "sms"}}, "Subscription.channel.type"),
    ({"channel": {"type": "rest-hook"}}, "Subscription.channel.endpoint"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://x", "header": ["X: a\r\nY: b"]}},
     "Subscription.channel.header[0]"),
])
def test_checks(change: dict[str, object], element: str | None) -> None:
    if element is None:
        spec.parse({**R4, **change})
        return
    with pytest.raises(FhirError) as caught:
        spec.parse({**R4, **change})
    assert caught.value.status == 422
    assert caught.value.outcome()["issue"][0]["expression"] == [element]

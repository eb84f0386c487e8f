"""The notification area's data files agree with each other and with the code that reads them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources

from fhir_server.workflows.notifications.contacts import OPT_OUT, preferred_contact, preferred_language
from fhir_server.workflows.notifications.record import EVENTS
from fhir_server.workflows.notifications.templates import TEMPLATES, render

PACKAGE = "fhir_server.workflows.notifications"


def test_every_language_has_a_template_for_every_event() -> None:
    events = {c["code"] for c in EVENTS["concept"]}
    assert {"en", "hi"} <= set(TEMPLATES)
    for language, block in TEMPLATES.items():
        assert set(block) - {"defaults"} == events, language
        for event in events:
            subject, text = render(language, event, {"name": "N", "when": "W"})
            assert subject and "$" not in text, (language, event)


def test_the_opt_out_extension_is_defined_where_the_code_looks_for_it() -> None:
    definition = json.loads(resources.files(PACKAGE).joinpath("extension-notification-opt-out.json").read_text())
    assert definition["url"] == OPT_OUT and definition["type"] == "Extension"


def test_rank_period_and_language_choice() -> None:
    now = datetime(2026, 12, 7, tzinfo=UTC)
    patient = {"telecom": [{"system": "email", "value": "e", "rank": 3},
                           {"system": "sms", "value": "old", "rank": 1, "period": {"end": "2026-12"}},
                           {"system": "sms", "value": "later", "rank": 1, "period": {"start": "2027"}},
                           {"system": "phone", "use": "mobile", "value": "m", "rank": 2}],
               "communication": [{"language": {"coding": [{"code": "ta"}]}},
                                 {"language": {"coding": [{"code": "hi-IN"}]}, "preferred": True}]}
    assert preferred_contact(patient, {"email", "sms"}, now).address == "old"  # type: ignore[union-attr]
    assert preferred_contact(patient, {"email", "sms"}, datetime(2027, 1, 1, tzinfo=UTC)).address == "later"  # type: ignore[union-attr]
    assert preferred_contact(patient, {"email"}, now).address == "e"  # type: ignore[union-attr]
    assert preferred_contact(patient, set(), now) is None
    assert preferred_language(patient, {"en", "hi"}, "en") == "hi"
    assert preferred_language({"communication": [{"language": {"text": "ta"}}]}, {"en", "hi"}, "en") == "en"

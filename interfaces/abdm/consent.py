"""ABDM consent artefacts as FHIR Consent resources, and the checks a health-information request must pass.

Mapping (consent artefact ``consentDetail`` -> Consent): status GRANTED -> active, REVOKED / EXPIRED ->
inactive, DENIED -> rejected, REQUESTED -> proposed; ``purpose`` -> provision.purpose; ``hiTypes`` ->
provision.class; ``permission.dateRange`` -> provision.dataPeriod (the records' dates); the consent's own
validity (createdAt .. dataEraseAt) -> provision.period; ``dataEraseAt``, ``accessMode``, ``frequency``
and the HIP / HIU ids -> extensions and provision.actor; care contexts -> provision.data (``Encounter/1``).
The Consent id is derived from the artefact id, so a repeated notification updates the same resource.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from interfaces.abdm.records import DateRange, parse_instant

ARTEFACT_SYSTEM = "https://abdm.gov.in/consent-artefact"
REQUEST_SYSTEM = "https://abdm.gov.in/consent-request"
HIU_SYSTEM = "https://abdm.gov.in/hiu"
HIP_SYSTEM = "https://facility.ndhm.gov.in"
HI_TYPE_SYSTEM = "https://abdm.gov.in/hi-type"
PURPOSE_SYSTEM = "https://abdm.gov.in/purpose-of-use"  # CAREMGT, BTG, PUBHLTH, HPAYMT, DSRCH, PATRQT
EXT = "urn:fhir-server:extension:abdm-"
STATUS = {"GRANTED": "active", "REVOKED": "inactive", "EXPIRED": "inactive", "DENIED": "rejected",
          "REQUESTED": "proposed"}
ROLE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


class ConsentRefused(Exception):
    """A request the consent does not allow; ``code`` and message go back to the gateway."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def consent_id(side: str, artefact_id: str) -> str:
    """Our Consent's id for an artefact (``side``: hip or hiu): stable, and a valid FHIR id whatever it is."""
    return f"abdm-{side}-{uuid.uuid5(uuid.NAMESPACE_URL, ARTEFACT_SYSTEM + '/' + artefact_id)}"


def _dt(value: Any, element: str) -> str:
    if not isinstance(value, str) or parse_instant(value) is None:
        raise ValueError(f"{element} is not a date-time")
    return value


def to_resource(side: str, status: str, detail: dict[str, Any], patient: str | None) -> dict[str, Any]:
    """A Consent from a consent artefact (``patient``: our Patient/<id>, when we know the patient)."""
    artefact = detail.get("consentId")
    if not isinstance(artefact, str) or not artefact:
        raise ValueError("consentDetail.consentId is missing")
    if status.upper() not in STATUS:
        raise ValueError(f"notification.status {status!r} is not one of {sorted(STATUS)}")
    permission = detail.get("permission") or {}
    dates = permission.get("dateRange") or {}
    erase = _dt(permission.get("dataEraseAt"), "permission.dataEraseAt")
    purpose = detail.get("purpose") or {}
    hiu, hip = detail.get("hiu") or {}, detail.get("hip") or {}
    actors = []
    if hiu.get("id"):
        actors.append({"role": {"coding": [{"system": ROLE, "code": "IRCP", "display": "information recipient"}]},
                       "reference": {"identifier": {"system": HIU_SYSTEM, "value": hiu["id"]},
                                     "display": hiu.get("name") or hiu["id"]}})
    if hip.get("id"):
        actors.append({"role": {"coding": [{"system": ROLE, "code": "CST", "display": "custodian"}]},
                       "reference": {"identifier": {"system": HIP_SYSTEM, "value": hip["id"]},
                                     "display": hip.get("name") or hip["id"]}})
    frequency = permission.get("frequency") or {}
    extensions: list[dict[str, Any]] = [{"url": EXT + "data-erase-at", "valueDateTime": erase}]
    if permission.get("accessMode"):
        extensions.append({"url": EXT + "access-mode", "valueCode": str(permission["accessMode"])})
    if frequency:
        every = f"{frequency.get('value', 1)} {frequency.get('unit', '')}"
        extensions.append({"url": EXT + "frequency", "valueString": f"{frequency.get('repeats', 0)} per {every}"})
    if (detail.get("patient") or {}).get("id"):
        extensions.append({"url": EXT + "patient-abha-address", "valueString": detail["patient"]["id"]})
    resource: dict[str, Any] = {
        "resourceType": "Consent", "id": consent_id(side, artefact),
        "extension": extensions,
        "identifier": [{"system": ARTEFACT_SYSTEM, "value": artefact}],
        "status": STATUS[status.upper()],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "period": {"start": detail.get("createdAt") or dates.get("from"), "end": erase},
            "dataPeriod": {"start": _dt(dates.get("from"), "permission.dateRange.from"),
                           "end": _dt(dates.get("to"), "permission.dateRange.to")},
            "purpose": [{"system": PURPOSE_SYSTEM, "code": str(purpose.get("code", "")),
                         "display": str(purpose.get("text", ""))}] if purpose.get("code") else [],
            "class": [{"system": HI_TYPE_SYSTEM, "code": str(t)} for t in detail.get("hiTypes") or []],
            "data": [{"meaning": "instance", "reference": {"reference": cc["careContextReference"]}}
                     for cc in detail.get("careContexts") or []
                     if isinstance(cc, dict) and isinstance(cc.get("careContextReference"), str)],
        },
    }
    if isinstance(detail.get("createdAt"), str):
        resource["dateTime"] = detail["createdAt"]
    if actors:
        resource["provision"]["actor"] = actors
    if patient:
        resource["patient"] = {"reference": patient}
    for key in ("purpose", "data", "class"):
        if not resource["provision"][key]:
            del resource["provision"][key]
    if resource["provision"]["period"]["start"] is None:
        del resource["provision"]["period"]["start"]
    return resource


@dataclass(frozen=True)
class Granted:
    """What a stored Consent permits, read back from the resource."""

    consent: dict[str, Any]
    hi_types: list[str]
    care_contexts: list[str]
    data_period: DateRange
    expires: datetime
    hiu: str | None

    @property
    def reference(self) -> str:
        return f"Consent/{self.consent['id']}"

    @property
    def artefact(self) -> str:
        return str(self.consent["identifier"][0]["value"])


def extension(resource: dict[str, Any], name: str) -> Any:
    for ext in resource.get("extension") or []:
        if ext.get("url") == EXT + name:
            return next((v for k, v in ext.items() if k.startswith("value")), None)
    return None


def granted(consent: dict[str, Any]) -> Granted:
    provision = consent.get("provision") or {}
    data = provision.get("dataPeriod") or {}
    start, end = parse_instant(data.get("start", "")), parse_instant(data.get("end", ""))
    expires = parse_instant((provision.get("period") or {}).get("end", "")) or datetime.min.replace(tzinfo=UTC)
    hiu = next((a["reference"]["identifier"]["value"] for a in provision.get("actor", [])
                if a.get("reference", {}).get("identifier", {}).get("system") == HIU_SYSTEM), None)
    return Granted(consent, [c["code"] for c in provision.get("class", [])],
                   [d["reference"]["reference"] for d in provision.get("data", [])],
                   DateRange(start or datetime.max.replace(tzinfo=UTC), end or datetime.min.replace(tzinfo=UTC)),
                   expires, hiu)


def check_request(consent: dict[str, Any] | None, requested: DateRange | None, now: datetime | None = None) -> Granted:
    """The consent as it allows this request; ConsentRefused when it is unknown, not active, expired, or the
    requested dates are not within the consented ones."""
    if consent is None:
        raise ConsentRefused("ABDM-1009", "Unknown consent artefact")
    if consent.get("status") != "active":
        raise ConsentRefused("ABDM-1011", f"The consent is not active ({consent.get('status')})")
    grant = granted(consent)
    if (now or datetime.now(UTC)) >= grant.expires:
        raise ConsentRefused("ABDM-1012", "The consent has expired")
    if requested is not None and not requested.within(grant.data_period):
        raise ConsentRefused("ABDM-1013", "The requested date range is outside the consented one")
    return grant


UNITS = {"HOUR": timedelta(hours=1), "DAY": timedelta(days=1), "WEEK": timedelta(weeks=1),
         "MONTH": timedelta(days=30), "YEAR": timedelta(days=365)}


def frequency(consent: dict[str, Any]) -> tuple[int, timedelta, str] | None:
    """(requests allowed, window, the window in words) of the artefact's ``permission.frequency``, or None.

    ``{"unit": "HOUR", "value": 1, "repeats": 0}``: our reading is that a request may be repeated ``repeats``
    times within any ``value`` ``unit``s, so at most ``repeats + 1`` requests in that window (every published
    example sends repeats 0, which cannot mean "never"; NHA publishes no rule, PROTOCOLS.md §B7)."""
    text = extension(consent, "frequency")
    if not isinstance(text, str):
        return None
    try:
        repeats, _per, value, unit = text.split()
        window = UNITS[unit.upper()] * max(1, int(value))
        return max(0, int(repeats)) + 1, window, f"{value} {unit.lower()}"
    except (ValueError, KeyError):
        return None


def check_frequency(consent: dict[str, Any], earlier: list[str], now: datetime | None = None) -> None:
    """ConsentRefused when the requests already served (``earlier``: their authoredOn) use up the window."""
    limit = frequency(consent)
    if limit is None:
        return
    allowed, window, words = limit
    since = (now or datetime.now(UTC)) - window
    recent = [m for m in (parse_instant(e) for e in earlier) if m is not None and m > since]
    if len(recent) >= allowed:
        raise ConsentRefused("ABDM-1014", f"The consent allows {allowed} request(s) per {words}; "
                                          f"{len(recent)} already made")


def date_range(body: Any, element: str) -> DateRange:
    if not isinstance(body, dict):
        raise ValueError(f"{element} is missing")
    start, end = parse_instant(str(body.get("from", ""))), parse_instant(str(body.get("to", "")))
    if start is None or end is None or end < start:
        raise ValueError(f"{element} needs from <= to as date-times")
    return DateRange(start, end)


def signed_bytes(detail: dict[str, Any]) -> bytes:
    """What the consent manager signs: ``consentDetail`` as compact JSON, its members in the order they came
    (projectEKA's consent manager signs its Jackson serialization with SHA256withRSA; which bytes NHA's CM
    signs is not published, PROTOCOLS.md §C)."""
    return json.dumps(detail, separators=(",", ":"), ensure_ascii=False).encode()


def signature_valid(detail: dict[str, Any], signature: Any, public_keys: list[Any]) -> bool:
    """The artefact's ``signature`` (base64 SHA256withRSA) verifies with one of the consent manager's keys."""
    if not isinstance(signature, str) or not signature:
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    message = signed_bytes(detail)
    for key in public_keys:
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
            return True
        except InvalidSignature:
            continue
    return False

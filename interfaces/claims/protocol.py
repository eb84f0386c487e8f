"""HCX 0.9 protocol vocabulary: APIs, header names, statuses, error codes, timestamps and acknowledgements.

Sources (docs/adapters.md lists them with commits): hcx-specs v0.9 ``openapi_hcx.yaml`` and
``error-descriptions.md``; the reference gateway hcx-platform (``Constants.java``, ``BaseRequest.validate``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

SENDER = "x-hcx-sender_code"
RECIPIENT = "x-hcx-recipient_code"
API_CALL_ID = "x-hcx-api_call_id"
CORRELATION_ID = "x-hcx-correlation_id"
WORKFLOW_ID = "x-hcx-workflow_id"
TIMESTAMP = "x-hcx-timestamp"
STATUS = "x-hcx-status"
REDIRECT_TO = "x-hcx-redirect_to"
ERROR_DETAILS = "x-hcx-error_details"
DEBUG_FLAG = "x-hcx-debug_flag"
BEN_ABHA_ID = "x-hcx-ben-abha-id"  # NHCX: the beneficiary's ABHA number
MANDATORY = (SENDER, RECIPIENT, API_CALL_ID, CORRELATION_ID, TIMESTAMP)

COMPLETE, PARTIAL, ERROR, REDIRECT = "response.complete", "response.partial", "response.error", "response.redirect"
RESPONSE_STATUSES = (COMPLETE, PARTIAL, ERROR, REDIRECT)
REQUEST_STATUSES = ("request.queued", "request.dispatched", "request.initiated")  # initiated: NHCX

# Provider-originated requests and the callbacks that answer them (same path + "on_").
ELIGIBILITY = "/coverageeligibility/check"
PREDETERMINATION = "/predetermination/submit"
PREAUTH = "/preauth/submit"
CLAIM = "/claim/submit"
STATUS_REQUEST = "/hcx/status"
TASK_SUBMIT = "/task/submit"  # NHCX: cancel / reprocess a claim (a TaskBundle)
INSURANCE_PLAN = "/insuranceplan/request"  # NHCX: the policy's InsurancePlan
COMMUNICATION_REQUEST = "/communication/request"  # payer-originated
PAYMENT_REQUEST = "/paymentnotice/request"  # payer-originated
REQUESTS = (ELIGIBILITY, PREDETERMINATION, PREAUTH, CLAIM, STATUS_REQUEST, COMMUNICATION_REQUEST, PAYMENT_REQUEST)
USE_TO_ACTION = {"predetermination": PREDETERMINATION, "preauthorization": PREAUTH, "claim": CLAIM}


def on_action(action: str) -> str:
    """``/claim/submit`` -> ``/claim/on_submit``; ``/hcx/status`` -> ``/hcx/on_status``."""
    head, _, verb = action.rpartition("/")
    return f"{head}/on_{verb}"


def request_action(callback: str) -> str:
    head, _, verb = callback.rpartition("/")
    return f"{head}/{verb.removeprefix('on_')}"


ERROR_RESPONSE = "/error/response"  # NHCX: a plain error JSON about one of our requests (care_nhcx doc 3.3)
CALLBACKS = tuple(on_action(a) for a in (ELIGIBILITY, PREDETERMINATION, PREAUTH, CLAIM, STATUS_REQUEST,
                                          TASK_SUBMIT, INSURANCE_PLAN))
INBOUND = (*CALLBACKS, COMMUNICATION_REQUEST, PAYMENT_REQUEST, ERROR_RESPONSE)  # what our callback router serves
ENTITY = {ELIGIBILITY: "coverageeligibility", PREDETERMINATION: "predetermination", PREAUTH: "preauth",
          CLAIM: "claim", STATUS_REQUEST: "status", COMMUNICATION_REQUEST: "communication",
          PAYMENT_REQUEST: "paymentnotice"}

# Gateway (synchronous) and recipient (x-hcx-error_details) error codes, hcx-specs v0.9 error-descriptions.md.
ERR_ACCESS_DENIED = "ERR_ACCESS_DENIED"
ERR_INVALID_PAYLOAD = "ERR_INVALID_PAYLOAD"
ERR_INVALID_ENCRYPTION = "ERR_INVALID_ENCRYPTION"
ERR_INVALID_SENDER = "ERR_INVALID_SENDER"
ERR_INVALID_RECIPIENT = "ERR_INVALID_RECIPIENT"
ERR_MANDATORY_HEADER_MISSING = "ERR_MANDATORY_HEADER_MISSING"
ERR_INVALID_API_CALL_ID = "ERR_INVALID_API_CALL_ID"
ERR_INVALID_CORRELATION_ID = "ERR_INVALID_CORRELATION_ID"
ERR_INVALID_TIMESTAMP = "ERR_INVALID_TIMESTAMP"
ERR_INVALID_STATUS = "ERR_INVALID_STATUS"
ERR_INVALID_REDIRECT_TO = "ERR_INVALID_REDIRECT_TO"
ERR_INVALID_ERROR_DETAILS = "ERR_INVALID_ERROR_DETAILS"
ERR_SERVICE_UNAVAILABLE = "ERR_SERVICE_UNAVAILABLE"
ERR_DOMAIN_PROCESSING = "ERR_DOMAIN_PROCESSING"
ERR_WRONG_DOMAIN_PAYLOAD = "ERR_WRONG_DOMAIN_PAYLOAD"
# The reference gateway spells one differently (hcx-platform ErrorCodes.java): both mean the same.
SAME_ERRORS = {"ERR_MANDATORY_HEADERFIELD_MISSING": ERR_MANDATORY_HEADER_MISSING}


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_id() -> str:
    return str(uuid.uuid4())


def timestamp(now: datetime | None = None) -> str:
    """ISO 8601 with the local offset, as every SDK and the gateway use (the spec's "Unix timestamp" text is
    not what runs): ``2024-05-02T10:15:30+05:30``."""
    return (now or datetime.now(UTC)).astimezone().isoformat(timespec="seconds")


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 (``+05:30`` or the Java SDK's ``+0530``) or epoch milliseconds / seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 10**11 else value
        return datetime.fromtimestamp(seconds, UTC)
    if not isinstance(value, str) or not value:
        raise ProtocolError(ERR_INVALID_TIMESTAMP, "x-hcx-timestamp is not a timestamp")
    text = value.strip().replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():  # +0530 -> +05:30
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ProtocolError(ERR_INVALID_TIMESTAMP, "x-hcx-timestamp is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise ProtocolError(ERR_INVALID_TIMESTAMP, "x-hcx-timestamp has no UTC offset")
    return parsed


def check_timestamp(value: Any, max_age: timedelta, skew: timedelta = timedelta(minutes=5),
                    now: datetime | None = None) -> None:
    """Not in the future (beyond clock skew), not older than ``max_age`` (the gateway's timestamp.range)."""
    at = parse_timestamp(value)
    current = now or datetime.now(UTC)
    if at > current + skew:
        raise ProtocolError(ERR_INVALID_TIMESTAMP, "x-hcx-timestamp is in the future")
    if at < current - max_age:
        raise ProtocolError(ERR_INVALID_TIMESTAMP, "x-hcx-timestamp is older than the accepted range")


def check_headers(headers: dict[str, Any], *, callback: bool) -> None:
    """The structural header checks of the gateway and of every recipient."""
    missing = [h for h in MANDATORY if not headers.get(h)]
    if callback and not headers.get(STATUS):
        missing.append(STATUS)
    if missing:
        raise ProtocolError(ERR_MANDATORY_HEADER_MISSING, f"missing protocol headers: {', '.join(missing)}")
    for name in (API_CALL_ID, CORRELATION_ID):
        try:
            uuid.UUID(str(headers[name]))
        except ValueError:
            raise ProtocolError(ERR_INVALID_API_CALL_ID if name == API_CALL_ID else ERR_INVALID_CORRELATION_ID,
                                f"{name} is not a UUID") from None
    status = headers.get(STATUS)
    if status is not None and status not in (RESPONSE_STATUSES if callback else REQUEST_STATUSES):
        raise ProtocolError(ERR_INVALID_STATUS, f"x-hcx-status {status!r} is not allowed here")
    if status == REDIRECT and not headers.get(REDIRECT_TO):
        raise ProtocolError(ERR_INVALID_REDIRECT_TO, "response.redirect needs x-hcx-redirect_to")
    details = headers.get(ERROR_DETAILS)
    if details is not None and (not isinstance(details, dict) or not details.get("code")
                                or not set(details) <= {"code", "message", "trace"}):
        raise ProtocolError(ERR_INVALID_ERROR_DETAILS, "x-hcx-error_details needs code and message only")


@dataclass(frozen=True)
class Ack:
    """The synchronous answer to every protocol POST (HTTP 202, or 4xx with ``error``)."""

    correlation_id: str | None
    api_call_id: str | None
    error: tuple[str, str] | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timestamp": int(time.time() * 1000), "correlation_id": self.correlation_id,
                               "api_call_id": self.api_call_id}
        if self.error is not None:
            out["error"] = {"code": self.error[0], "message": self.error[1], "trace": None}
        return out


def error_response(body: dict[str, Any], gateway_code: str | None, our_code: str) -> dict[str, Any]:
    """NHCX ``/error/response`` as a plain ProtocolResponse (``response.error``). It comes either as the
    protocol headers themselves or as the gateway's ErrorResponse (``correlation_id``, ``api_call_id``,
    ``timestamp``, ``error{code,message}``; its exact NHCX shape is [UNCONFIRMED]): then the gateway is the
    sender and we the recipient."""
    headers = {k: v for k, v in body.items() if k.startswith("x-hcx-")}
    error = body.get("error") if isinstance(body.get("error"), dict) else None
    headers.setdefault(CORRELATION_ID, body.get("correlation_id"))
    headers.setdefault(API_CALL_ID, body.get("api_call_id") or new_id())
    headers.setdefault(SENDER, body.get("sender_code") or gateway_code)
    headers.setdefault(RECIPIENT, body.get("recipient_code") or our_code)
    headers.setdefault(TIMESTAMP, body.get("timestamp") or timestamp())
    headers[STATUS] = ERROR
    if ERROR_DETAILS not in headers:
        details = error or {"code": ERR_DOMAIN_PROCESSING, "message": str(body.get("message") or "error")}
        headers[ERROR_DETAILS] = {k: str(details[k]) for k in ("code", "message", "trace") if details.get(k)}
        headers[ERROR_DETAILS].setdefault("message", "")
    return {k: v for k, v in headers.items() if v is not None}

"""The two channels: e-mail over SMTP (plain, STARTTLS or implicit TLS; optional login) and SMS through an HTTP
gateway (URL, auth header and body template from settings). Errors leave as TransportError whose message
names what failed without the address or the text (PII stays out of logs and the outbox's last_error)."""

from __future__ import annotations

import json
import smtplib
import ssl
from email.message import EmailMessage
from string import Template
from urllib.parse import quote_plus

import httpx

from fhir_server.config import Settings


class TransportError(Exception):
    """A delivery failed; the message is safe to log (no addresses, no message text)."""


def describe(exc: BaseException) -> str:
    """An exception as a PII-free phrase: its type and, for SMTP, the server's reply code."""
    code = getattr(exc, "smtp_code", None)
    return f"{type(exc).__name__}{f' {code}' if code else ''}"


def usable_channels(settings: Settings) -> set[str]:
    return ({"email"} if settings.notify_smtp_host else set()) | ({"sms"} if settings.notify_sms_url else set())


def send_email(settings: Settings, to: str, subject: str, text: str, message_id: str) -> None:
    message = EmailMessage()
    message["From"] = settings.notify_email_from
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{message_id}@fhir-server>"  # the same on every retry: receivers drop repeats
    message.set_content(text)
    host, port, timeout = settings.notify_smtp_host or "", settings.notify_smtp_port, settings.notify_timeout_seconds
    try:
        context = ssl.create_default_context(cafile=settings.notify_smtp_ca_file)  # verifies the host name too
        if settings.notify_smtp_security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout)
        with smtp:
            if settings.notify_smtp_security == "starttls":
                smtp.starttls(context=context)
            if settings.notify_smtp_user:
                password = settings.notify_smtp_password.get_secret_value() if settings.notify_smtp_password else ""
                smtp.login(settings.notify_smtp_user, password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise TransportError(f"e-mail not accepted: {describe(exc)}") from None


def _escape(value: str, content_type: str) -> str:
    if "json" in content_type:
        return json.dumps(value, ensure_ascii=False)[1:-1]
    if "x-www-form-urlencoded" in content_type:
        return quote_plus(value)
    return value


def send_sms(settings: Settings, to: str, text: str, message_id: str) -> None:
    content_type = settings.notify_sms_content_type
    body = Template(settings.notify_sms_body_template).safe_substitute(
        to=_escape(to, content_type), text=_escape(text, content_type), id=_escape(message_id, content_type))
    headers = {"Content-Type": content_type, "Idempotency-Key": message_id}
    if settings.notify_sms_auth_header:
        name, _, value = settings.notify_sms_auth_header.get_secret_value().partition(":")
        headers[name.strip()] = value.strip()
    try:
        response = httpx.post(settings.notify_sms_url or "", content=body.encode("utf-8"), headers=headers,
                              timeout=settings.notify_timeout_seconds)
    except httpx.HTTPError as exc:
        raise TransportError(f"SMS gateway unreachable: {describe(exc)}") from None
    if not response.is_success:
        raise TransportError(f"SMS gateway answered {response.status_code}")

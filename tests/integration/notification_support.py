"""Real receivers on loopback for the notification tests: an SMTP server (aiosmtpd, with login) and an HTTP SMS
gateway that can be told to fail for a number a few times (or always)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SMTP_USER, SMTP_PASSWORD = "notifier", "s3cret-pw"


@dataclass
class SmtpSink:
    """Every message the SMTP server accepted, and the users that logged in."""

    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        message = cast(EmailMessage, message_from_bytes(cast(bytes, envelope.original_content), policy=policy.default))
        with self.lock:
            self.messages.append(message)
        return "250 OK"

    def authenticate(self, _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str,
                     data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login.decode() == SMTP_USER and \
            data.password.decode() == SMTP_PASSWORD
        if ok:
            with self.lock:
                self.logins.append(data.login.decode())
        return AuthResult(success=ok)

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    def start(self, port: int, **tls: Any) -> None:
        """``tls``: aiosmtpd's ``tls_context`` + ``require_starttls`` (STARTTLS: AUTH only after it) or ``ssl_context``
        (implicit TLS; aiosmtpd cannot tell that session is encrypted, so it may not require it for AUTH)."""
        self.controller = Controller(self, hostname="127.0.0.1", port=port, authenticator=self.authenticate,
                                     auth_require_tls="tls_context" in tls, server_hostname="localhost", **tls)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()


@dataclass
class SmsRequest:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class SmsGateway:
    """POST / with the JSON body template; answers 503 while ``failing[number]`` > 0 (or is -1: always)."""

    server: ThreadingHTTPServer
    received: list[SmsRequest] = field(default_factory=list)
    failing: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/send"

    def to(self, number: str) -> list[SmsRequest]:
        with self.lock:
            return [r for r in self.received if r.body.get("to") == number]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_sms_gateway() -> SmsGateway:
    gateway: SmsGateway

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            with gateway.lock:
                gateway.received.append(SmsRequest({k.lower(): v for k, v in self.headers.items()}, body))
                left = gateway.failing.get(body.get("to"), 0)
                if left > 0:
                    gateway.failing[body["to"]] = left - 1
            self.send_response(503 if left else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return None

    gateway = SmsGateway(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=gateway.server.serve_forever, daemon=True).start()
    return gateway


def tls_files(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA (its PEM path, for FHIR_NOTIFY_SMTP_CA_FILE) and a server context whose certificate it signed,
    for the host name ``localhost``."""
    now = dt.datetime.now(dt.UTC)

    def issue(name: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
              issuer: x509.Name, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notify test CA")])
    ca = issue("notify test CA", ca_key, ca_key, ca_name, True)
    server = issue("localhost", server_key, ca_key, ca_name, False)
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "smtp.pem", tmp / "smtp.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_path), str(key_path))
    return ca_path, context

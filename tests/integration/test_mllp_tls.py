"""MLLP over TLS (FHIR_MLLP_TLS_CERT/KEY), with and without client certificates, on loopback."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interfaces.mllp.framing import encode
from interfaces.mllp.listener import MllpListener
from tests.conftest import LiveServer
from tests.integration.test_mllp import GOLDEN, Running, read_acks, segment


def _cert(tmp: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
          ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_cert, ca_key, ca_path, _ = _cert(tmp_path, "ca", ca=True)
    _, _, server_cert, server_key = _cert(tmp_path, "server", (ca_cert, ca_key))
    _, _, client_cert, client_key = _cert(tmp_path, "client", (ca_cert, ca_key))
    return {"ca": ca_path, "server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key}


def _send(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(encode((GOLDEN / "ADT_A04/register_outpatient.hl7").read_bytes()))
        return read_acks(sock, 1)[0]  # type: ignore[arg-type]


def test_tls_with_required_client_certificates(api: LiveServer, pki: dict[str, Path]) -> None:
    settings = api.backend.settings.model_copy(update={
        "mllp_tls_cert": str(pki["server_cert"]), "mllp_tls_key": str(pki["server_key"]),
        "mllp_tls_client_ca": str(pki["ca"])})
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0, settings=settings))
    try:
        client = ssl.create_default_context(cafile=str(pki["ca"]))
        client.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
        assert segment(_send(running.port, client), "MSA")[1] == "AA"
        anonymous = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            _send(running.port, anonymous)
        plain = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        with plain:
            plain.sendall(encode(b"MSH|^~\\&|A|B|||20240101||ADT^A01|1|P|2.5"))
            try:
                data = plain.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b""  # no TLS handshake: nothing is read as HL7, the server hangs up
    finally:
        running.stop()
    assert api.http.get("Patient", params={"identifier": "ADT-100"}).json()["total"] == 1

"""Helpers for the tests of every package (not used by the products themselves).

- :data:`OWN_SUBCHANNELS`, for tests that call gRPC servers through grpcio;
- :func:`issue`, certificates for TLS tests (P-256, PEM files for 127.0.0.1).

grpcio shares subchannels between every channel of a process by target and options. A test's
channel left to a port whose server has gone holds a subchannel in its reconnect backoff; when a
later test's server is given the same ephemeral port, a new channel to it reuses that subchannel
and fails at once with the old "Connection refused" (seen in CI). Channels made with
:data:`OWN_SUBCHANNELS` keep their own, so each test connects afresh.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

OWN_SUBCHANNELS: tuple[str, int] = ("grpc.use_local_subchannel_pool", 1)
"""A grpcio channel option: this channel's subchannels are its own (``options=[...]``)."""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def issue(
    directory: Path,
    name: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    valid: dt.timedelta = dt.timedelta(days=90),
) -> Issued:
    """``name``'s certificate for 127.0.0.1, self-signed unless ``issuer`` is given; written to
    ``<directory>/<name>.crt`` and ``.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + valid)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.BasicConstraints(ca=ca or issuer is None, path_length=None), critical=True
        )
    )
    certificate = builder.sign(issuer.private_key if issuer else key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path, key, certificate)

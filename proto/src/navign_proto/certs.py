"""Small X.509 certificates (P-256, SHA-256) for the gateway's gRPC TLS: a mall's own CA, the
port's server certificate and the callers' client certificates (``navign-gateway tls-init`` and
``tls-issue``; the tests' certificates too).

Public: :class:`Pair`, :func:`new_certificate`, :func:`alternative_names`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def alternative_names(addresses: Sequence[str]) -> list[x509.GeneralName]:
    """Each address as an IP address or a DNS name; ValueError names one that is neither."""
    names: list[x509.GeneralName] = []
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            if not _DNS_NAME.fullmatch(address):
                raise ValueError(f"{address!r} is neither an IP address nor a host name") from None
            names.append(x509.DNSName(address.lower()))
    return names


def new_certificate(
    name: str,
    *,
    issuer: Pair | None = None,
    ca: bool = False,
    usage: Literal["server", "client"] | None = None,
    addresses: Sequence[str] = (),
    valid: dt.timedelta = dt.timedelta(days=825),
    now: dt.datetime | None = None,
) -> Pair:
    """A new key and a certificate for it, named ``name`` (CN), signed by ``issuer`` (self-signed
    without one), valid from five minutes ago (clocks differ) for ``valid``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if addresses:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names(addresses)), critical=False
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if usage is not None:
        purpose = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if usage == "server"
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    certificate = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Pair(certificate, key)

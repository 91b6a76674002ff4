"""Helpers for the tests of every package (not used by the products themselves).

- :data:`OWN_SUBCHANNELS`, for tests that call gRPC servers through grpcio;
- :func:`issue`, certificates for TLS tests (P-256, PEM files for 127.0.0.1), and
  :func:`tls_credentials` for a grpcio client trusting one and presenting another.

grpcio shares subchannels between every channel of a process by target and options. A test's
channel left to a port whose server has gone holds a subchannel in its reconnect backoff; when a
later test's server is given the same ephemeral port, a new channel to it reuses that subchannel
and fails at once with the old "Connection refused" (seen in CI). Channels made with
:data:`OWN_SUBCHANNELS` keep their own, so each test connects afresh.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto.certs import Pair, new_certificate

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
    """``name``'s certificate for 127.0.0.1, self-signed (and so its own CA) unless ``issuer``
    is given; written to ``<directory>/<name>.crt`` and ``.key``."""
    signer = Pair(issuer.certificate, issuer.private_key) if issuer else None
    made = new_certificate(
        name, issuer=signer, ca=ca or issuer is None, addresses=("127.0.0.1",), valid=valid
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(made.cert_pem())
    key_path.write_bytes(made.key_pem())
    return Issued(cert_path, key_path, made.key, made.certificate)


def tls_credentials(trust: Issued, client: Issued | None = None) -> Any:
    """grpcio channel credentials that trust ``trust`` and present ``client`` when given
    (grpcio is imported here: it is navign-proto's optional ``grpc`` extra)."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=trust.pem(),
        private_key=client.key_pem() if client else None,
        certificate_chain=client.pem() if client else None,
    )

"""``navign-gateway tls-init`` and ``tls-issue``: certificates for the gRPC port's TLS for a mall
without a PKI of its own (protocol §7).

A folder holds the mall's CA (``ca.crt``, ``ca.key``), the port's certificate (``grpc.crt``,
``grpc.key``, for the addresses the towers dial), ``clients.pem`` (the CA the callers'
certificates must come from: this CA) and the callers' certificates (``clients/NAME.crt`` and
``.key``). ``flash.sh sd --grpc-tls DIR`` takes ``grpc.crt``, ``grpc.key`` and ``clients.pem``
from it; the CA's key never leaves the folder. Keys are written with mode 0600, every file to a
temporary name first, so an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from navign_gateway.grpc_tls import FOLDER_FILES
from navign_proto.certs import Pair, alternative_names, new_certificate

CA_FILES = ("ca.crt", "ca.key")
PORT_CERT, PORT_KEY, CLIENTS = FOLDER_FILES
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class TlsToolError(Exception):
    """One readable line; nothing was written."""


def _staged(path: Path) -> Path:
    return path.with_name(f".{path.name}.staged")


def _put(files: dict[Path, tuple[bytes, int]]) -> None:
    """Write every file aside (synced, with its mode from the start), then rename them all: a
    failure leaves the folder as it was."""
    try:
        for path, (data, mode) in files.items():
            _staged(path).unlink(missing_ok=True)  # left by a crash, perhaps with another mode
            fd = os.open(_staged(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        for path in files:
            _staged(path).unlink(missing_ok=True)
        raise TlsToolError(f"{exc.filename}: cannot write: {exc.strerror}") from None
    for path in files:
        os.replace(_staged(path), path)


def _addresses(addresses: Sequence[str]) -> list[str]:
    if not addresses:
        raise TlsToolError("give at least one --address: the IP address or name towers dial")
    try:
        alternative_names(addresses)
    except ValueError as exc:
        raise TlsToolError(f"--address: {exc}") from None
    return list(addresses)


def _port_files(
    directory: Path, ca: Pair, addresses: Sequence[str], days: int
) -> dict[Path, tuple[bytes, int]]:
    port = new_certificate(
        f"navign gateway {addresses[0]}",
        issuer=ca,
        usage="server",
        addresses=addresses,
        valid=dt.timedelta(days=days),
    )
    return {
        directory / PORT_CERT: (port.cert_pem(), 0o644),
        directory / PORT_KEY: (port.key_pem(), 0o600),
    }


def init(directory: Path, addresses: Sequence[str], *, days: int, ca_days: int) -> str:
    """A new CA and port certificate in ``directory`` (made if missing); refuses to replace
    any file. Returns a summary line."""
    addresses = _addresses(addresses)
    directory.mkdir(parents=True, exist_ok=True)
    present = [name for name in (*CA_FILES, *FOLDER_FILES) if (directory / name).exists()]
    if present:
        raise TlsToolError(f"{directory / present[0]} exists; nothing written (tls-issue renews)")
    ca = new_certificate(
        f"navign mall CA {directory.resolve().name}", ca=True, valid=dt.timedelta(days=ca_days)
    )
    files = {
        directory / "ca.crt": (ca.cert_pem(), 0o644),
        directory / "ca.key": (ca.key_pem(), 0o600),
        directory / CLIENTS: (ca.cert_pem(), 0o644),
        **_port_files(directory, ca, addresses, days),
    }
    _put(files)
    return (
        f"{directory}: a CA (ca.crt; ca.key stays here) and the port's certificate for "
        f"{', '.join(addresses)} (grpc.crt, grpc.key, valid {days} days); callers' "
        f"certificates: tls-issue {directory} --client NAME; on a card: flash.sh sd --grpc-tls "
        f"{directory}"
    )


def _load_ca(directory: Path) -> Pair:
    cert_path, key_path = (directory / name for name in CA_FILES)
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise TlsToolError(f"{exc.filename}: {exc.strerror} (tls-init makes the CA)") from None
    except (ValueError, TypeError) as exc:
        raise TlsToolError(f"{directory}: the CA does not load ({exc})") from None
    if (
        not isinstance(key, ec.EllipticCurvePrivateKey)
        or key.public_key() != certificate.public_key()
    ):
        raise TlsToolError(f"{key_path}: not the key of {cert_path}")
    return Pair(certificate, key)


def issue_port(directory: Path, addresses: Sequence[str], *, days: int) -> str:
    """A new port certificate from ``directory``'s CA, replacing grpc.crt and grpc.key (a
    renewal: copy them to the gateway's /etc/navign/tls/, it picks them up)."""
    addresses = _addresses(addresses)
    ca = _load_ca(directory)
    _put(_port_files(directory, ca, addresses, days))
    return (
        f"{directory}: grpc.crt and grpc.key renewed for {', '.join(addresses)}, valid {days} days"
    )


def issue_client(directory: Path, name: str, *, days: int) -> str:
    """A caller's certificate (a tower, an operator tool) from ``directory``'s CA, in
    ``clients/NAME.crt`` and ``.key``; refuses to replace one."""
    if not _NAME.fullmatch(name):
        raise TlsToolError(f"--client {name!r}: 1-64 letters, digits and ._-")
    ca = _load_ca(directory)
    clients = directory / "clients"
    cert, key = clients / f"{name}.crt", clients / f"{name}.key"
    for path in (cert, key):
        if path.exists():
            raise TlsToolError(f"{path} exists; nothing written")
    made = new_certificate(name, issuer=ca, usage="client", valid=dt.timedelta(days=days))
    clients.mkdir(exist_ok=True)
    _put({cert: (made.cert_pem(), 0o644), key: (made.key_pem(), 0o600)})
    return f"{cert}, {key}: {name}'s client certificate, valid {days} days"

"""TLS for the gateway's gRPC port (protocol §7): a server certificate, and optionally client
certificates required from every caller (the robots' tower included, which has no token).

The files are re-read when they change, without a restart: every new connection's handshake
compares their size and modification time with the loaded ones (one ``stat`` per file) and, when
they differ, builds a fresh context from them and hands the connection to it (OpenSSL's
server-name callback, which runs for every handshake, with or without SNI). A rotation half done
(the certificate replaced, the key not yet) fails to load: the gateway keeps serving the
previous pair, logs one WARNING for that state of the files, and tries again at the next
handshake. Connections already open keep the certificate they were made with.

Whether client certificates are required is fixed at start (OpenSSL keeps a connection's verify
mode from the first context); which CAs are trusted for them follows the file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

log = logging.getLogger(__name__)

EXPIRY_WARNING = dt.timedelta(days=14)
#: How often a running gateway checks the files and the expiry without a new connection.
CHECK_SECONDS = 3600.0
#: A certificate near its expiry is warned about at most this often while the gateway runs.
REWARN = dt.timedelta(days=1)


#: A TLS folder's files (``tls-init``'s output, a card's ``navign/tls/``): the port's certificate
#: and key, and the CA bundle callers' certificates must come from (optional).
FOLDER_FILES = ("grpc.crt", "grpc.key", "clients.pem")


class TlsError(Exception):
    """The certificate, key or client CA cannot be used; the message is one line."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert, self.key, self.client_ca) if p is not None)


_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(files: TlsFiles) -> _Stamp:
    """What changes when a file is replaced or rewritten: inode, size, mtime (ns)."""
    stamps = []
    for path in files.paths():
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((-1, -1, -1))
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def not_after(cert: Path) -> dt.datetime:
    """The expiry of the first certificate in ``cert`` (PEM). Raises :class:`TlsError`."""
    from cryptography import x509  # only gateways with TLS on pay for the parser

    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"{cert}: not a PEM certificate ({_reason(exc)})") from None
    return certificate.not_valid_after_utc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _encrypted(key: Path) -> str:
    raise TlsError(f"{key}: the key is encrypted; the gateway needs it unencrypted (mode 0600)")


def build_context(
    files: TlsFiles, on_handshake: Callable[..., None] | None = None
) -> ssl.SSLContext:
    """A server context for gRPC (TLS 1.2 or newer, ALPN ``h2``) from ``files``.
    Raises :class:`TlsError` naming the file at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    for path in files.paths():
        if not path.is_file():
            raise TlsError(f"{path}: no such file")
    try:
        # An encrypted key would make OpenSSL prompt on the terminal: refuse it instead.
        context.load_cert_chain(files.cert, files.key, password=partial(_encrypted, files.key))
    except TlsError:
        raise
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsError(f"{files.key}: does not match the certificate {files.cert}") from None
        raise TlsError(f"{files.cert}, {files.key}: cannot load ({_reason(exc)})") from None
    except OSError as exc:
        raise TlsError(f"{files.cert}, {files.key}: cannot read ({_reason(exc)})") from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"{files.client_ca}: not a PEM CA bundle ({_reason(exc)})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    if on_handshake is not None:
        context.sni_callback = on_handshake
    return context


class ServerTls:
    """The port's TLS: :attr:`context` for the listening socket, current files on every
    handshake. Raises :class:`TlsError` when the files cannot be used at start."""

    def __init__(self, files: TlsFiles, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self.files = files
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._stamp = _stamp(files)
        #: The listening socket's; each handshake is handed to :attr:`_current` (at first, this).
        self.context = build_context(files, on_handshake=self._handshake)
        self._current = self.context
        self._refused: _Stamp | None = None
        self.not_after = not_after(files.cert)
        self.reloads = 0
        self._warned_at: dt.datetime | None = None
        self._warn_if_expiring()

    @property
    def client_certificates(self) -> bool:
        return self.files.client_ca is not None

    def _handshake(self, connection: ssl.SSLObject, _server_name: str | None, _: object) -> None:
        try:
            self.reload_if_changed()
        except Exception:  # the handshake must go on with what is loaded
            log.exception("gRPC TLS: reloading the certificate failed")
        connection.context = self._current

    def reload_if_changed(self) -> bool:
        """Load the files again when they changed since the last load; True when it did."""
        stamp = _stamp(self.files)
        if stamp == self._stamp or stamp == self._refused:
            return False
        try:
            context = build_context(self.files)
            expiry = not_after(self.files.cert)
        except TlsError as exc:
            self._refused = stamp
            log.warning("gRPC TLS: kept the loaded certificate; the files changed but %s", exc)
            return False
        self._current, self.not_after, self._stamp, self._refused = context, expiry, stamp, None
        self.reloads += 1
        log.info("gRPC TLS: loaded the changed certificate (valid until %s)", expiry.isoformat())
        self._warn_if_expiring()
        return True

    def check(self) -> None:
        """What a running gateway does every :data:`CHECK_SECONDS`: reload changed files (so
        the status is right even when no caller connects) and warn, once a day, about a
        certificate near its expiry (gateways run for months)."""
        self.reload_if_changed()
        if self._warned_at is None or self._now() - self._warned_at >= REWARN:
            self._warn_if_expiring()

    async def run(self) -> None:
        """:meth:`check` every :data:`CHECK_SECONDS`, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                self.check()
            except Exception:  # a check must never end the gateway's TLS
                log.exception("gRPC TLS: the periodic check failed")

    def _warn_if_expiring(self) -> None:
        now = self._now()
        left = self.not_after - now
        if left <= EXPIRY_WARNING:
            self._warned_at = now
        if left <= dt.timedelta(0):
            log.warning(
                "gRPC TLS: the certificate %s expired on %s", self.files.cert, self.not_after.date()
            )
        elif left <= EXPIRY_WARNING:
            hours = int(left.total_seconds() // 3600)
            log.warning(
                "gRPC TLS: the certificate %s expires in %s (%s)",
                self.files.cert,
                f"{left.days} days" if left.days >= 2 else f"{hours} hours",
                self.not_after.isoformat(timespec="minutes"),
            )

    def describe(self) -> dict[str, object]:
        """For the gateway's status: expiry, client certificates, reloads."""
        return {
            "not_after": self.not_after.isoformat(),
            "client_certificates": self.client_certificates,
            "reloads": self.reloads,
        }

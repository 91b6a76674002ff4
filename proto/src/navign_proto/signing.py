"""Signed HTTP requests from a gateway to the server.

The canonical request string is seven lines joined by ``\\n`` (no trailing newline)::

    NAVIGN-REQUEST-V1
    <METHOD, uppercase>
    <path, exactly as sent on the wire, percent-encoding kept>
    <canonical query: pairs percent-decoded, sorted, re-encoded (RFC 3986 unreserved kept)>
    <timestamp: unix seconds, decimal>
    <nonce>
    <lowercase hex SHA-256 of the body bytes (of b"" when there is no body)>

It is signed with ECDSA P-256 / SHA-256 and sent in headers:

* ``X-Signature``: base64 (standard alphabet, padded) of the raw 64-byte ``r || s``;
* ``X-Timestamp``: the timestamp line;
* ``X-Nonce``: 16 to 64 characters of ``[A-Za-z0-9_-]``, fresh for every request.

Verification checks the signature and the clock skew; refusing a reused nonce needs state, so it
is left to the caller's :class:`NonceStore` (the server keeps nonces for twice the skew window).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, quote

from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.errors import (
    SignatureMalformedError,
    SignatureMissingError,
    TimestampSkewError,
)

SCHEME = "NAVIGN-REQUEST-V1"
HEADER_SIGNATURE = "X-Signature"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
#: Requests whose timestamp is further than this from the verifier's clock are refused.
MAX_SKEW_SECONDS = 300
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_query(query: str) -> str:
    """Sort the query's pairs and encode them one way, whatever encoding the client used."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise SignatureMalformedError(
            "query string has percent-escapes that are not UTF-8"
        ) from exc
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(pairs))


def canonical_request(
    method: str, path: str, query: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    """The exact bytes a request signature covers."""
    method = method.upper()
    if not _METHOD_RE.fullmatch(method):
        raise SignatureMalformedError(f"bad HTTP method {method!r}")
    if not path.startswith("/") or any(c in path for c in "\n\r?#"):
        raise SignatureMalformedError(f"bad request path {path!r}")
    if not _NONCE_RE.fullmatch(nonce):
        raise SignatureMalformedError("nonce must be 16-64 characters of [A-Za-z0-9_-]")
    lines = (SCHEME, method, path, canonical_query(query), str(timestamp), nonce, body_sha256(body))
    return "\n".join(lines).encode("utf-8")


def new_nonce() -> str:
    """22 characters of URL-safe base64: 128 random bits."""
    return secrets.token_urlsafe(16)


def sign_request(
    key: ec.EllipticCurvePrivateKey,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers that sign this request."""
    ts = int(time.time()) if timestamp is None else timestamp
    nc = new_nonce() if nonce is None else nonce
    signature = keys.sign(key, canonical_request(method, path, query, ts, nc, body))
    return {
        HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: nc,
    }


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """What a successful verification vouches for; the caller must still check the nonce."""

    timestamp: int
    nonce: str


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get(name.lower())
    if value is None or value == "":
        raise SignatureMissingError(f"{name} header")
    return value.strip()


def verify_request(
    key: ec.EllipticCurvePublicKey,
    method: str,
    path: str,
    query: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: int | None = None,
    max_skew: int = MAX_SKEW_SECONDS,
) -> VerifiedRequest:
    """Verify a signed request's signature and timestamp.

    Raises a :class:`~navign_proto.errors.SignatureError` subclass: missing or malformed headers,
    a timestamp outside ``±max_skew`` of ``now``, or a signature that does not verify. The
    caller must then refuse a nonce it has seen (:class:`NonceStore`).
    """
    raw_signature = _header(headers, HEADER_SIGNATURE)
    raw_timestamp = _header(headers, HEADER_TIMESTAMP)
    nonce = _header(headers, HEADER_NONCE)
    if not _TIMESTAMP_RE.fullmatch(raw_timestamp):
        raise SignatureMalformedError(f"{HEADER_TIMESTAMP} must be unix seconds")
    timestamp = int(raw_timestamp)
    clock = int(time.time()) if now is None else now
    if abs(timestamp - clock) > max_skew:
        raise TimestampSkewError(timestamp, clock, max_skew)
    try:
        signature = base64.b64decode(raw_signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureMalformedError(f"{HEADER_SIGNATURE} is not base64") from exc
    keys.verify(key, canonical_request(method, path, query, timestamp, nonce, body), signature)
    return VerifiedRequest(timestamp, nonce)


class NonceStore(Protocol):
    """Remembers nonces long enough to refuse a replay within the skew window."""

    def remember(self, nonce: str, timestamp: int) -> bool:
        """Record ``nonce``; return False if it was already seen (a replay)."""
        ...


class MemoryNonceStore:
    """A bounded in-memory :class:`NonceStore` for one process.

    A nonce first seen at time ``t`` is kept until ``t + 2 * max_skew``: its request's timestamp
    is at most ``t + max_skew``, so after that no replay of it can pass the skew check. When
    ``capacity`` live nonces are held the store refuses new ones rather than forget a live one
    (a flood must not open a replay window).
    """

    def __init__(self, max_skew: int = MAX_SKEW_SECONDS, capacity: int = 100_000) -> None:
        self._retention = 2 * max_skew
        self._capacity = capacity
        self._seen: OrderedDict[str, int] = OrderedDict()

    def remember(self, nonce: str, timestamp: int, *, now: int | None = None) -> bool:
        """Record ``nonce``; False for a replay, or when the store is full of live nonces."""
        clock = int(time.time()) if now is None else now
        self._expire(clock)
        if nonce in self._seen:
            return False
        if len(self._seen) >= self._capacity:
            return False
        self._seen[nonce] = clock + self._retention
        return True

    def _expire(self, clock: int) -> None:
        # Entries are appended in arrival order, so expiry times are monotonic.
        while self._seen:
            nonce, expires = next(iter(self._seen.items()))
            if expires > clock:
                break
            del self._seen[nonce]

    def __len__(self) -> int:
        return len(self._seen)

"""Verification of signed gateway requests (docs/protocol.md §2.2), with replay refusal."""

from __future__ import annotations

from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Request

from navign_proto.errors import (
    SignatureError,
    SignatureMissingError,
    TimestampSkewError,
)
from navign_proto.signing import verify_request
from navign_proto.wire import ErrorCode
from navign_server.context import ServerContext
from navign_server.errors import ApiError


async def verify_signed_request(
    ctx: ServerContext, request: Request, body: bytes, key: ec.EllipticCurvePublicKey
) -> None:
    """Check signature and clock skew, then refuse a nonce seen before.

    The nonce is recorded only after the signature verifies, so nobody can burn a gateway's
    nonces with unsigned requests.
    """
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    path = raw_path.decode("latin-1").split("?", 1)[0]
    query = request.scope.get("query_string", b"").decode("latin-1")
    now = ctx.clock()
    skew = ctx.settings.signature_max_skew_seconds
    try:
        verified = verify_request(
            key,
            request.method,
            path,
            query,
            body,
            request.headers,
            now=int(now.timestamp()),
            max_skew=skew,
        )
    except SignatureMissingError as exc:
        raise ApiError(ErrorCode.AUTH_MISSING, f"signed request: {exc}") from None
    except TimestampSkewError as exc:
        raise ApiError(
            ErrorCode.AUTH_TIMESTAMP_SKEW,
            str(exc),
            details={"server_time": int(now.timestamp()), "max_skew_seconds": skew},
        ) from None
    except SignatureError as exc:
        raise ApiError(ErrorCode.AUTH_INVALID_SIGNATURE, f"signature refused: {exc}") from None
    fresh = await ctx.store.remember_nonce(verified.nonce, now + timedelta(seconds=2 * skew), now)
    if not fresh:
        raise ApiError(ErrorCode.AUTH_NONCE_REUSED, "this request was already received (replay)")

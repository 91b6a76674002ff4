"""The error envelope every non-2xx response carries, its codes, and decoding exceptions.

``{"error": {"code": ..., "message": ..., "details": {...}, "request_id": ...}}``

HTTP status rule: 401 when the caller's credentials cannot be accepted (missing, invalid,
expired, badly signed, skewed, replayed, or a bad enrollment token); 403 when they are
accepted but the action is not allowed (wrong scope, pinned key mismatch, awaiting approval,
disabled); 409 for state conflicts; 410 for history that is gone; 422 for well-formed JSON
that breaks a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final, Self

from pydantic import Field
from pydantic_core import ErrorDetails

from navign_proto.errors import ProtoError
from navign_proto.wire._types import LongText, ShortText, UtcDateTime, WireMessage


class ErrorCode(StrEnum):
    # From the seed protocol.
    AUTH_TOKEN_EXPIRED = "AUTH_TOKEN_EXPIRED"  # noqa: S105 - an error code, not a secret
    AUTH_INVALID_SIGNATURE = "AUTH_INVALID_SIGNATURE"
    SYNC_CHECKSUM_MISMATCH = "SYNC_CHECKSUM_MISMATCH"
    FIRMWARE_NOT_FOUND = "FIRMWARE_NOT_FOUND"
    ENTITY_NOT_FOUND = "ENTITY_NOT_FOUND"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    BEACON_NOT_REGISTERED = "BEACON_NOT_REGISTERED"
    TASK_ALREADY_ASSIGNED = "TASK_ALREADY_ASSIGNED"
    NETWORK_TIMEOUT = "NETWORK_TIMEOUT"
    # Ours.
    AUTH_MISSING = "AUTH_MISSING"
    AUTH_INVALID_TOKEN = "AUTH_INVALID_TOKEN"  # noqa: S105 - an error code, not a secret
    AUTH_FORBIDDEN = "AUTH_FORBIDDEN"
    AUTH_TIMESTAMP_SKEW = "AUTH_TIMESTAMP_SKEW"
    AUTH_NONCE_REUSED = "AUTH_NONCE_REUSED"
    AUTH_KEY_MISMATCH = "AUTH_KEY_MISMATCH"
    ENROLLMENT_TOKEN_INVALID = "ENROLLMENT_TOKEN_INVALID"  # noqa: S105 - an error code, not a secret
    ORCHESTRATOR_PENDING_APPROVAL = "ORCHESTRATOR_PENDING_APPROVAL"
    ORCHESTRATOR_DISABLED = "ORCHESTRATOR_DISABLED"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    CONFLICT = "CONFLICT"
    SYNC_CURSOR_EXPIRED = "SYNC_CURSOR_EXPIRED"
    FIRMWARE_SIGNATURE_INVALID = "FIRMWARE_SIGNATURE_INVALID"
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.AUTH_MISSING: 401,
    ErrorCode.AUTH_INVALID_TOKEN: 401,
    ErrorCode.AUTH_TOKEN_EXPIRED: 401,
    ErrorCode.AUTH_INVALID_SIGNATURE: 401,
    ErrorCode.AUTH_TIMESTAMP_SKEW: 401,
    ErrorCode.AUTH_NONCE_REUSED: 401,
    ErrorCode.ENROLLMENT_TOKEN_INVALID: 401,
    ErrorCode.AUTH_FORBIDDEN: 403,
    ErrorCode.AUTH_KEY_MISMATCH: 403,
    ErrorCode.ORCHESTRATOR_PENDING_APPROVAL: 403,
    ErrorCode.ORCHESTRATOR_DISABLED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ENTITY_NOT_FOUND: 404,
    ErrorCode.FIRMWARE_NOT_FOUND: 404,
    ErrorCode.BEACON_NOT_REGISTERED: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.SYNC_CHECKSUM_MISMATCH: 409,
    ErrorCode.TASK_ALREADY_ASSIGNED: 409,
    ErrorCode.SYNC_CURSOR_EXPIRED: 410,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.RANGE_NOT_SATISFIABLE: 416,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.FIRMWARE_SIGNATURE_INVALID: 422,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.NETWORK_TIMEOUT: 504,
}
"""The HTTP status the server answers with for each code."""


def known_error_code(code: str) -> ErrorCode | None:
    try:
        return ErrorCode(code)
    except ValueError:
        return None


class ErrorBody(WireMessage):
    # ``code`` is a plain string so a code added by a newer server still parses.
    code: ShortText
    message: LongText
    details: dict[str, Any] | None = Field(default=None, max_length=100)
    request_id: ShortText
    timestamp: UtcDateTime | None = None

    @property
    def known_code(self) -> ErrorCode | None:
        return known_error_code(self.code)


class ErrorEnvelope(WireMessage):
    error: ErrorBody

    @classmethod
    def of(
        cls,
        code: ErrorCode,
        message: str,
        *,
        request_id: str,
        details: dict[str, Any] | None = None,
    ) -> Self:
        body = ErrorBody(code=code, message=message, details=details, request_id=request_id)
        return cls(error=body)

    @property
    def http_status(self) -> int:
        """The status for this code; 500 for a code this version does not know."""
        known = self.error.known_code
        return 500 if known is None else HTTP_STATUS[known]


class WireError(ProtoError):
    """A message from a peer could not be decoded."""

    def __init__(self, message_type: str, reason: str) -> None:
        super().__init__(f"{message_type}: {reason}")
        self.message_type = message_type
        self.reason = reason


class MalformedMessageError(WireError):
    """Not UTF-8, not JSON, not a JSON object, or too large."""


class InvalidMessageError(WireError):
    """Well-formed JSON whose shape or values break the message's rules."""

    def __init__(self, message_type: str, errors: Sequence[ErrorDetails]) -> None:
        shown = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
            for error in errors[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(message_type, f"invalid payload: {shown}{more}")
        self.errors = tuple(errors)

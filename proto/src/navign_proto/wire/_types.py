"""Base classes and constrained types for the HTTP and SSE messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)


class WireMessage(BaseModel):
    """A message parsed from a peer: unknown fields are ignored (forward compatibility)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class StrictWireMessage(BaseModel):
    """A request body the server validates: an unknown field is an error, not a silent drop."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_rfc3339(value: datetime) -> str:
    """``2025-01-08T10:00:00Z``: RFC 3339 in UTC with a ``Z`` (microseconds when non-zero)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("cannot format a naive datetime as RFC 3339")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a UTC offset (RFC 3339), e.g. 2025-01-08T10:00:00Z")
    return value.astimezone(UTC)


UtcDateTime = Annotated[
    datetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]
"""An aware datetime, converted to UTC; naive input is rejected; JSON form ends in ``Z``."""

SHA256_CHECKSUM_PATTERN: Final = r"^sha256:[0-9a-f]{64}$"

Sha256Checksum = Annotated[str, StringConstraints(pattern=SHA256_CHECKSUM_PATTERN)]
"""``sha256:`` followed by 64 lowercase hex digits."""

Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]
"""A position in an entity's monotonic sequence (0 = nothing written yet)."""

Count = Annotated[int, Field(ge=0, le=10_000_000)]

Keyword = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
]
"""A lowercase machine name: ``task_assignment``, ``beacon``, ``robot_selection``."""

LooseKeyword = Annotated[str, StringConstraints(min_length=1, max_length=64)]
"""A peer-chosen type name we must tolerate even when unknown (command and task types)."""

Version = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$"),
]

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
LongText = Annotated[str, StringConstraints(max_length=4096)]

Token = Annotated[
    str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9._~+/=-]+$")
]
"""A bearer token or enrollment token (JWT compact form fits)."""

UrlRef = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=2048,
        pattern=r"^(?:https?://[^\s/?#]+(?:[/?#]\S*)?|/[^/\s]\S*)$",
    ),
]
"""An absolute http(s) URL, or an absolute path on the server (``/api/...``)."""

Address = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^\S+$")]
"""Where peers reach a gateway: ``https://gw.local:50051`` or ``192.168.1.10:50051``."""

JsonObject = dict[str, Any]

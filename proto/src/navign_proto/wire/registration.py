"""``POST /api/orchestrators/register`` and the token refresh answer."""

from __future__ import annotations

from typing import Annotated, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import AfterValidator, Field, StringConstraints

from navign_proto.mall import Identifier
from navign_proto.wire._types import (
    Address,
    Keyword,
    StrictWireMessage,
    Token,
    UrlRef,
    Version,
    WireMessage,
)

HEARTBEAT_INTERVAL_MIN: Final = 10
HEARTBEAT_INTERVAL_MAX: Final = 3_600
HEARTBEAT_INTERVAL_DEFAULT: Final = 60
CAPABILITIES_MAX: Final = 32


def _check_p256_pem(value: str) -> str:
    try:
        key = load_pem_public_key(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise ValueError("public_key is not a PEM-encoded public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("public_key must be an ECDSA P-256 (secp256r1) public key")
    return value


P256PublicKeyPem = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024),
    AfterValidator(_check_p256_pem),
]
"""A SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``) holding a P-256 key."""


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("capabilities must not repeat")
    return values


# extra="forbid": the server validates this body, and a misspelt ``enrollment_token``
# silently dropped would turn into a confusing authentication failure.
class RegisterRequest(StrictWireMessage):
    entity_id: Identifier
    orchestrator_id: Identifier
    version: Version
    capabilities: Annotated[
        list[Keyword], Field(max_length=CAPABILITIES_MAX), AfterValidator(_unique)
    ] = Field(default_factory=list)
    public_key: P256PublicKeyPem
    heartbeat_interval: int = Field(
        default=HEARTBEAT_INTERVAL_DEFAULT, ge=HEARTBEAT_INTERVAL_MIN, le=HEARTBEAT_INTERVAL_MAX
    )
    local_address: Address
    enrollment_token: Token | None = None


class SyncEndpoints(WireMessage):
    events: UrlRef
    data_sync: UrlRef
    firmware: UrlRef


class TokenRefreshRequest(StrictWireMessage):
    """Body of the signed ``POST /api/orchestrators/token``: names the key that signed it."""

    entity_id: Identifier
    orchestrator_id: Identifier


class TokenRefreshResponse(WireMessage):
    token: Token
    expires_at: int = Field(ge=0, description="unix seconds")


class RegisterResponse(TokenRefreshResponse):
    assigned_id: Identifier
    sync_endpoints: SyncEndpoints
    initial_sync_required: bool

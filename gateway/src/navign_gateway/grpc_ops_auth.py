"""Bearer tokens for ``navign.gateway.v1`` (protocol §7.2).

Every call carries the metadata ``authorization: Bearer <token>``. The gateway's configuration
(``[grpc]``) holds only the SHA-256 of each accepted token, as lowercase hex, in two lists:
``operator_token_sha256`` (may read and operate: pause, resume, abort, approve) and
``reader_token_sha256`` (may read). A stolen configuration file therefore holds no usable
secret. A presented token is hashed and compared with every configured digest in constant time.

- no token configured at all: every call fails with UNAUTHENTICATED, saying how to add one;
- no ``authorization``, not ``Bearer <token>``, or a token no digest matches: UNAUTHENTICATED;
- a reader token calling a mutating method: PERMISSION_DENIED.

``task.OrchestratorService`` is not guarded: the existing tower sends no credentials (§7.1).

Public: :class:`Role`, :class:`AccessPolicy`, :func:`token_digest`,
:data:`MIN_TOKEN_CHARS`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import Iterable
from typing import Final

from navign_gateway.config import GrpcConfig
from navign_gateway.grpc_transport import CallContext, Status

log = logging.getLogger(__name__)

#: Tokens shorter than this are refused by ``navign-gateway token-hash`` (guessable).
MIN_TOKEN_CHARS: Final = 16
_SCHEME: Final = "bearer"
NOT_CONFIGURED: Final = (
    "no gRPC tokens are configured on this gateway: put the SHA-256 of a token in [grpc] "
    "operator_token_sha256 or reader_token_sha256 of the gateway's configuration "
    "(`navign-gateway token-hash --generate` makes a token and prints its digest)"
)


class Role(enum.IntEnum):
    """What a token may do; a higher role includes the lower ones."""

    READER = 1
    OPERATOR = 2


def token_digest(token: str) -> str:
    """The SHA-256 of a token's UTF-8 bytes, lowercase hex (what the configuration holds)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AccessPolicy:
    """The accepted token digests and the role each grants."""

    def __init__(self, operator_sha256: Iterable[str] = (), reader_sha256: Iterable[str] = ()):
        granted: dict[str, Role] = {}
        for digest in reader_sha256:
            granted[digest.lower()] = Role.READER
        for digest in operator_sha256:  # a digest in both lists is an operator's
            granted[digest.lower()] = Role.OPERATOR
        self._granted: tuple[tuple[bytes, Role], ...] = tuple(
            (digest.encode("ascii"), role) for digest, role in sorted(granted.items())
        )

    @property
    def configured(self) -> bool:
        return bool(self._granted)

    @classmethod
    def from_config(cls, config: GrpcConfig) -> AccessPolicy:
        return cls(config.operator_token_sha256, config.reader_token_sha256)

    def role_of(self, token: str) -> Role | None:
        """The role ``token`` grants, or None. Every digest is compared (no early exit), each
        in constant time, so the time taken says nothing about how close a guess was."""
        return self._role_of_digest(token_digest(token))

    def _role_of_digest(self, digest_hex: str) -> Role | None:
        presented = digest_hex.encode("ascii")
        found: Role | None = None
        for digest, role in self._granted:
            if hmac.compare_digest(digest, presented):
                found = role
        return found

    async def authorize(self, context: CallContext, needed: Role, method: str) -> str:
        """Abort the call unless its bearer token grants ``needed``; returns a short,
        non-secret name of the token for audit logs (``sha256:`` and 8 hex digits)."""
        if not self._granted:
            await context.abort(Status.UNAUTHENTICATED, NOT_CONFIGURED)
        values = [
            value for key, value in context.invocation_metadata() if key.lower() == "authorization"
        ]
        if not values:
            await context.abort(
                Status.UNAUTHENTICATED, "missing metadata authorization: Bearer <token>"
            )
        if len(values) > 1:
            await context.abort(
                Status.UNAUTHENTICATED, "metadata authorization given more than once"
            )
        value = values[0]
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _SCHEME or not token:
            await context.abort(
                Status.UNAUTHENTICATED, "metadata authorization: expected Bearer <token>"
            )
        digest = token_digest(token)
        role = self._role_of_digest(digest)
        if role is None:
            log.debug("%s from %s: unknown token", method, context.peer())
            await context.abort(Status.UNAUTHENTICATED, "invalid token")
        if role < needed:
            await context.abort(
                Status.PERMISSION_DENIED,
                f"{method} needs an operator token; this one may only read",
            )
        return f"sha256:{digest[:8]}"

"""Access tokens for gateways: ES256 JWTs with ``kid``, short-lived, signed by rotating keys.

Signing keys live in the store so every server instance signs and verifies with the same set.
A key signs for ``rotation`` (default 30 days); then a new key takes over and the old one keeps
verifying until every token it signed has expired. ``/.well-known/jwks.json`` publishes the
public halves.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from navign_proto import keys
from navign_proto.wire import ErrorCode
from navign_server.errors import ApiError
from navign_server.storage.base import SigningKey, Store

ALGORITHM = "ES256"
SCOPE_ORCHESTRATOR = "orchestrator"
#: A token whose kid is unknown makes us re-read the keys at most this often (seconds).
KEY_RELOAD_INTERVAL = 5.0
#: Clock difference between server instances tolerated for a token's ``iat`` (seconds).
ISSUED_AT_LEEWAY = 60


@dataclass(frozen=True, slots=True)
class TokenClaims:
    subject: str
    entity_id: str
    scope: str
    issued_at: datetime
    expires_at: datetime
    token_id: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenService:
    def __init__(
        self,
        store: Store,
        *,
        issuer: str,
        ttl_seconds: int,
        rotation: timedelta = timedelta(days=30),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._issuer = issuer
        self._ttl = ttl_seconds
        self._rotation = rotation
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._private: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._last_reload = 0.0

    @property
    def ttl_seconds(self) -> int:
        return self._ttl

    async def start(self) -> None:
        """Load the keys, creating the first one or rotating an old one."""
        await self._reload()
        await self.rotate_if_due()

    async def rotate_if_due(self) -> None:
        now = self._clock()
        active = self._active_keys()
        if active and now - active[-1].created_at < self._rotation:
            return
        await self.rotate(now)

    async def rotate(self, now: datetime) -> str:
        """Create a new signing key and retire the others (they keep verifying for a while)."""
        private = keys.generate_private_key()
        kid = _b64url(bytes.fromhex(keys.key_id(private.public_key()))[:12])
        await self._store.add_signing_key(
            SigningKey(
                kid=kid, private_pem=keys.private_key_to_pem(private).decode(), created_at=now
            )
        )
        grace = now + timedelta(seconds=self._ttl + 300)
        for old in self._active_keys():
            await self._store.retire_signing_key(old.kid, now, grace)
        await self._reload()
        return kid

    def _active_keys(self) -> list[SigningKey]:
        return sorted(
            (k for k in self._keys.values() if k.retired_at is None), key=lambda k: k.created_at
        )

    async def _reload(self) -> None:
        now = self._clock()
        self._keys = {
            k.kid: k
            for k in await self._store.list_signing_keys()
            if k.expires_at is None or k.expires_at > now
        }
        self._private = {
            kid: keys.load_private_key_pem(k.private_pem.encode()) for kid, k in self._keys.items()
        }
        self._last_reload = time.monotonic()

    def issue(
        self, entity_id: str, orchestrator_id: str, scope: str = SCOPE_ORCHESTRATOR
    ) -> tuple[str, int]:
        """A new token and its expiry (unix seconds)."""
        active = self._active_keys()
        if not active:
            raise RuntimeError("TokenService.start() was not awaited")
        key = active[-1]
        now = int(self._clock().timestamp())
        expires = now + self._ttl
        claims = {
            "iss": self._issuer,
            "sub": orchestrator_id,
            "entity_id": entity_id,
            "scope": scope,
            "iat": now,
            "exp": expires,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(
            claims, self._private[key.kid], algorithm=ALGORITHM, headers={"kid": key.kid}
        )
        return token, expires

    async def verify(self, token: str) -> TokenClaims:
        """The token's claims, or ApiError AUTH_TOKEN_EXPIRED / AUTH_INVALID_TOKEN."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "malformed access token") from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "access token must be ES256 with a kid")
        if kid not in self._private and time.monotonic() - self._last_reload > KEY_RELOAD_INTERVAL:
            await self._reload()  # another instance may have rotated
        public = self._private.get(kid)
        if public is None:
            raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "access token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public.public_key(),
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                # Times are checked below against our clock (the one tokens were issued by).
                options={
                    "require": ["iss", "sub", "exp", "iat", "jti", "entity_id", "scope"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, f"invalid access token: {exc}") from None
        if not all(isinstance(claims[c], str) for c in ("sub", "entity_id", "scope", "jti")):
            raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "access token claims have wrong types")
        if not all(type(claims[c]) is int for c in ("iat", "exp")):
            raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "access token times must be integers")
        now = self._clock().timestamp()
        if claims["exp"] <= now:
            raise ApiError(ErrorCode.AUTH_TOKEN_EXPIRED, "access token expired")
        if claims["iat"] > now + ISSUED_AT_LEEWAY:
            raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "access token issued in the future")
        return TokenClaims(
            subject=claims["sub"],
            entity_id=claims["entity_id"],
            scope=claims["scope"],
            issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
            token_id=claims["jti"],
        )

    def jwks(self) -> dict[str, Any]:
        """The public keys, as a JSON Web Key Set."""
        result = []
        for kid, private in sorted(self._private.items()):
            numbers = private.public_key().public_numbers()
            result.append(
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "use": "sig",
                    "alg": ALGORITHM,
                    "kid": kid,
                    "x": _b64url(numbers.x.to_bytes(32, "big")),
                    "y": _b64url(numbers.y.to_bytes(32, "big")),
                }
            )
        return {"keys": result}

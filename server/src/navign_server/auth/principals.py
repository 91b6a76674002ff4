"""Who is calling: FastAPI dependencies for gateways (bearer JWT) and admins (admin token)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from navign_proto.wire import ErrorCode
from navign_server.auth.tokens import SCOPE_ORCHESTRATOR, TokenClaims
from navign_server.context import ServerContext, context
from navign_server.errors import ApiError
from navign_server.ratelimit import retry_after_header
from navign_server.storage.base import NotFoundError, Orchestrator, OrchestratorStatus

ADMIN_TOKEN_PREFIX = "nva_"  # noqa: S105 - a prefix, not a secret


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(ErrorCode.AUTH_MISSING, "Authorization: Bearer <token> is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(ErrorCode.AUTH_MISSING, "Authorization must be a Bearer token")
    return token.strip()


def hash_secret(secret: str) -> str:
    """How admin and enrollment tokens are stored: never in the clear."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class GatewayPrincipal:
    claims: TokenClaims
    orchestrator: Orchestrator

    @property
    def entity_id(self) -> str:
        return self.claims.entity_id

    @property
    def orchestrator_id(self) -> str:
        return self.claims.subject

    @property
    def actor(self) -> str:
        return f"orchestrator:{self.entity_id}/{self.orchestrator_id}"

    def require_entity(self, entity_id: str | None) -> None:
        """A token of mall A never reads or writes mall B."""
        if entity_id is not None and entity_id != self.entity_id:
            raise ApiError(
                ErrorCode.AUTH_FORBIDDEN,
                "this token belongs to another entity",
                details={"entity_id": entity_id},
            )


def check_orchestrator_status(orchestrator: Orchestrator) -> None:
    if orchestrator.status is OrchestratorStatus.DISABLED:
        raise ApiError(ErrorCode.ORCHESTRATOR_DISABLED, "this gateway has been disabled")
    if orchestrator.status is OrchestratorStatus.PENDING:
        raise ApiError(
            ErrorCode.ORCHESTRATOR_PENDING_APPROVAL,
            "this gateway awaits an administrator's approval",
            headers={"Retry-After": "60"},
        )


async def gateway(
    request: Request, ctx: Annotated[ServerContext, Depends(context)]
) -> GatewayPrincipal:
    claims = await ctx.tokens.verify(bearer_token(request))
    if claims.scope != SCOPE_ORCHESTRATOR:
        raise ApiError(ErrorCode.AUTH_FORBIDDEN, f"token scope {claims.scope!r} cannot do this")
    try:
        orchestrator = await ctx.store.get_orchestrator(claims.entity_id, claims.subject)
    except NotFoundError:
        raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "token for an unknown gateway") from None
    check_orchestrator_status(orchestrator)
    valid_after = orchestrator.tokens_valid_after
    # ``iat`` has whole seconds: a token from the second of the revocation is revoked too.
    if valid_after is not None and claims.issued_at <= valid_after.replace(microsecond=0):
        raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "token revoked; refresh it")
    wait = ctx.limits.requests.acquire(f"orch:{claims.entity_id}/{claims.subject}")
    if wait:
        raise ApiError(
            ErrorCode.RATE_LIMIT_EXCEEDED, "too many requests", headers=retry_after_header(wait)
        )
    principal = GatewayPrincipal(claims, orchestrator)
    principal.require_entity(request.headers.get("x-entity-id"))
    asked = request.headers.get("x-orchestrator-id")
    if asked is not None and asked != claims.subject:
        raise ApiError(ErrorCode.AUTH_FORBIDDEN, "X-Orchestrator-ID does not match the token")
    return principal


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    name: str

    @property
    def actor(self) -> str:
        return f"admin:{self.name}"


async def admin(
    request: Request, ctx: Annotated[ServerContext, Depends(context)]
) -> AdminPrincipal:
    token = bearer_token(request)
    record = await ctx.store.get_admin_token(hash_secret(token))
    if record is None or record.revoked_at is not None:
        raise ApiError(ErrorCode.AUTH_INVALID_TOKEN, "unknown or revoked admin token")
    return AdminPrincipal(record.name)


Gateway = Annotated[GatewayPrincipal, Depends(gateway)]
Admin = Annotated[AdminPrincipal, Depends(admin)]
Ctx = Annotated[ServerContext, Depends(context)]

"""Gateway enrollment, token refresh and heartbeats (docs/protocol.md §3.1-3.3, §3.8)."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, Request

from navign_proto import keys
from navign_proto.errors import KeyFormatError
from navign_proto.wire import Command as WireCommand
from navign_proto.wire import (
    ErrorCode,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    SyncEndpoints,
    TokenRefreshRequest,
    TokenRefreshResponse,
)
from navign_server.api.bodies import json_body, read_json
from navign_server.auth.principals import Ctx, Gateway, check_orchestrator_status, hash_secret
from navign_server.auth.signed import verify_signed_request
from navign_server.context import ServerContext, client_address
from navign_server.errors import ApiError
from navign_server.ratelimit import retry_after_header
from navign_server.storage.base import (
    ConflictError,
    Heartbeat,
    NotFoundError,
    OrchestratorRegistration,
    OrchestratorStatus,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/orchestrators", tags=["gateways"])

_TOKEN_REASONS = {"unknown", "used", "expired", "wrong_binding"}


async def _audit(
    ctx: ServerContext,
    actor: str,
    action: str,
    outcome: str,
    entity_id: str | None,
    **details: object,
) -> None:
    await ctx.audit(actor, action, outcome=outcome, entity_id=entity_id, **details)


def _limit(ctx: ServerContext, limiter_name: str, key: str) -> None:
    limiter = getattr(ctx.limits, limiter_name)
    wait = limiter.acquire(key)
    if wait:
        raise ApiError(
            ErrorCode.RATE_LIMIT_EXCEEDED,
            "too many requests; slow down",
            headers=retry_after_header(wait),
        )


@router.post("/register", response_model=RegisterResponse, openapi_extra=json_body(RegisterRequest))
async def register(request: Request, ctx: Ctx) -> RegisterResponse:
    address = client_address(request)
    _limit(ctx, "registration", f"addr:{address}")
    body, raw = await read_json(request, RegisterRequest)
    actor = f"anonymous:{address}"
    try:
        key = keys.load_public_key(body.public_key)
    except KeyFormatError as exc:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"public_key: {exc}") from None
    try:
        await verify_signed_request(ctx, request, raw, key)
    except ApiError as exc:
        await _audit(
            ctx, actor, "register", exc.code, body.entity_id, orchestrator_id=body.orchestrator_id
        )
        raise
    try:
        await ctx.store.get_entity(body.entity_id)
    except NotFoundError:
        raise ApiError(
            ErrorCode.ENTITY_NOT_FOUND, f"entity {body.entity_id!r} does not exist"
        ) from None

    registration = OrchestratorRegistration(
        entity_id=body.entity_id,
        orchestrator_id=body.orchestrator_id,
        public_key_pem=keys.public_key_to_pem(key),
        key_id=keys.key_id(key),
        version=body.version,
        capabilities=tuple(body.capabilities),
        local_address=body.local_address,
        heartbeat_interval=body.heartbeat_interval,
    )
    now = ctx.clock()
    token_hash = hash_secret(body.enrollment_token) if body.enrollment_token else None
    first_activation = True
    try:
        existing = await ctx.store.get_orchestrator(body.entity_id, body.orchestrator_id)
        first_activation = existing.status is not OrchestratorStatus.ACTIVE
    except NotFoundError:
        pass
    try:
        orchestrator = await ctx.store.activate(registration, now, token_hash=token_hash)
    except ConflictError as exc:
        code, message, headers = _registration_refusal(exc)
        if exc.reason == "not_enrolled":
            await ctx.store.save_pending(registration, now)
        await _audit(
            ctx,
            actor,
            "register",
            code,
            body.entity_id,
            orchestrator_id=body.orchestrator_id,
            key_id=registration.key_id,
        )
        ctx.metrics.registrations.labels(code.value).inc()
        raise ApiError(code, message, headers=headers) from None
    token, expires_at = ctx.tokens.issue(body.entity_id, body.orchestrator_id)
    ctx.metrics.registrations.labels("ok").inc()
    await _audit(
        ctx,
        f"orchestrator:{body.entity_id}/{body.orchestrator_id}",
        "register",
        "ok",
        body.entity_id,
        key_id=registration.key_id,
        enrolled=token_hash is not None,
    )
    base = ctx.settings.public_url
    log.info("gateway %s/%s registered", body.entity_id, body.orchestrator_id)
    return RegisterResponse(
        token=token,
        expires_at=expires_at,
        assigned_id=orchestrator.orchestrator_id,
        sync_endpoints=SyncEndpoints(
            events=f"{base}/api/orchestrators/events",
            data_sync=f"{base}/api/orchestrators/sync",
            firmware=f"{base}/api/firmware",
        ),
        initial_sync_required=first_activation,
    )


def _registration_refusal(exc: ConflictError) -> tuple[ErrorCode, str, dict[str, str]]:
    if exc.kind == "enrollment_token" and exc.reason in _TOKEN_REASONS:
        return ErrorCode.ENROLLMENT_TOKEN_INVALID, f"enrollment token {exc.reason}", {}
    if exc.reason == "key_mismatch":
        return (
            ErrorCode.AUTH_KEY_MISMATCH,
            "this gateway is registered with another key; an administrator must re-enroll it",
            {},
        )
    if exc.reason == "disabled":
        return ErrorCode.ORCHESTRATOR_DISABLED, "this gateway has been disabled", {}
    if exc.reason == "not_enrolled":
        return (
            ErrorCode.ORCHESTRATOR_PENDING_APPROVAL,
            "no enrollment token or pre-registered key: waiting for an administrator's approval",
            {"Retry-After": "60"},
        )
    return ErrorCode.CONFLICT, str(exc), {}


@router.post(
    "/token", response_model=TokenRefreshResponse, openapi_extra=json_body(TokenRefreshRequest)
)
async def refresh_token(request: Request, ctx: Ctx) -> TokenRefreshResponse:
    body, raw = await read_json(request, TokenRefreshRequest)
    _limit(ctx, "refresh", f"orch:{body.entity_id}/{body.orchestrator_id}")
    actor = f"orchestrator:{body.entity_id}/{body.orchestrator_id}"
    try:
        orchestrator = await ctx.store.get_orchestrator(body.entity_id, body.orchestrator_id)
    except NotFoundError:
        orchestrator = None
    if orchestrator is None or orchestrator.public_key_pem is None:
        await _audit(ctx, actor, "token.refresh", ErrorCode.AUTH_INVALID_SIGNATURE, body.entity_id)
        raise ApiError(ErrorCode.AUTH_INVALID_SIGNATURE, "no key is pinned for this gateway")
    await verify_signed_request(
        ctx, request, raw, keys.load_public_key(orchestrator.public_key_pem)
    )
    check_orchestrator_status(orchestrator)
    token, expires_at = ctx.tokens.issue(body.entity_id, body.orchestrator_id)
    await _audit(ctx, actor, "token.refresh", "ok", body.entity_id)
    return TokenRefreshResponse(token=token, expires_at=expires_at)


@router.post(
    "/heartbeat", response_model=HeartbeatResponse, openapi_extra=json_body(HeartbeatRequest)
)
async def heartbeat(request: Request, ctx: Ctx, principal: Gateway) -> HeartbeatResponse:
    body, _ = await read_json(request, HeartbeatRequest)
    principal.require_entity(body.entity_id)
    if body.orchestrator_id != principal.orchestrator_id:
        raise ApiError(ErrorCode.AUTH_FORBIDDEN, "orchestrator_id does not match the token")
    now = ctx.clock()
    await ctx.store.record_heartbeat(
        Heartbeat(
            entity_id=principal.entity_id,
            orchestrator_id=principal.orchestrator_id,
            received_at=now,
            body=body.model_dump(mode="json"),
        )
    )
    if body.acked_commands:
        await ctx.store.ack_commands(
            principal.entity_id, principal.orchestrator_id, body.acked_commands, now
        )
    pending = await ctx.store.pending_commands(principal.entity_id, principal.orchestrator_id, now)
    return HeartbeatResponse(
        acknowledged=True,
        server_time=now,
        next_heartbeat_seconds=principal.orchestrator.heartbeat_interval,
        commands=[WireCommand(id=c.command_id, type=c.type, params=c.params) for c in pending],
    )


#: A gateway is offline after this many missed heartbeat intervals.
OFFLINE_AFTER_MISSED = 3


def offline_after(interval_seconds: int) -> timedelta:
    return timedelta(seconds=interval_seconds * OFFLINE_AFTER_MISSED)

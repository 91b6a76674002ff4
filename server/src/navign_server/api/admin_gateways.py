"""The admin API for gateways: enrollment tokens, pre-registered keys, approval, disabling,
heartbeats and commands. Every call is audit-logged."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import Field, ValidationError

from navign_proto import keys
from navign_proto.errors import KeyFormatError
from navign_proto.mall import Identifier
from navign_proto.wire import ErrorCode
from navign_proto.wire import format_rfc3339 as rfc3339
from navign_server.api.admin import AdminBody, IdPath, audit_action, not_found
from navign_server.api.bodies import json_body, read_json
from navign_server.api.rollout import ROLLOUT_COMMANDS
from navign_server.auth.principals import Admin, AdminPrincipal, Ctx, hash_secret
from navign_server.context import ServerContext
from navign_server.errors import ApiError, validation_problems
from navign_server.storage.base import (
    Command,
    ConflictError,
    EnrollmentToken,
    NotFoundError,
    Orchestrator,
    PreregisteredKey,
)

router = APIRouter(prefix="/api/admin", tags=["admin"])

ENROLLMENT_TOKEN_PREFIX = "nve_"  # noqa: S105 - a prefix, not a secret


class EnrollmentTokenCreate(AdminBody):
    entity_id: Identifier
    orchestrator_id: Identifier
    ttl_seconds: int = Field(3600, ge=60, le=86_400)


class PreregisteredKeyCreate(AdminBody):
    entity_id: Identifier
    orchestrator_id: Identifier
    public_key: str = Field(min_length=1, max_length=4096)


class CommandCreate(AdminBody):
    type: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")
    params: dict[str, Any] = Field(default_factory=dict, max_length=100)
    ttl_seconds: int = Field(86_400, ge=60, le=7 * 86_400)


def _check_params(body: CommandCreate) -> None:
    """The params of a command type this server knows (the rollout commands), as the gateway
    will read them: a mistake is 422 here, not a command the gateway skips."""
    model = ROLLOUT_COMMANDS.get(body.type)
    if model is None:
        return
    try:
        model.model_validate(body.params)
    except ValidationError as exc:
        errors = validation_problems(exc.errors())
        for problem in errors:
            problem["loc"] = ["params", *problem["loc"]]
        first = errors[0]
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"{'.'.join(first['loc'])}: {first['msg']}",
            details={"errors": errors},
        ) from None


def _orchestrator(o: Orchestrator) -> dict[str, Any]:
    return {
        "entity_id": o.entity_id,
        "orchestrator_id": o.orchestrator_id,
        "status": o.status.value,
        "key_id": o.key_id,
        "version": o.version,
        "capabilities": list(o.capabilities),
        "local_address": o.local_address,
        "heartbeat_interval": o.heartbeat_interval,
        "created_at": rfc3339(o.created_at),
        "updated_at": rfc3339(o.updated_at),
        "last_heartbeat_at": rfc3339(o.last_heartbeat_at) if o.last_heartbeat_at else None,
    }


# -- gateways ---------------------------------------------------------------------------------


@router.post("/enrollment-tokens", status_code=201, openapi_extra=json_body(EnrollmentTokenCreate))
async def create_enrollment_token(request: Request, ctx: Ctx, who: Admin) -> dict[str, Any]:
    body, _ = await read_json(request, EnrollmentTokenCreate)
    try:
        await ctx.store.get_entity(body.entity_id)
    except NotFoundError as exc:
        raise not_found(exc) from None
    secret = ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(24)
    now = ctx.clock()
    expires = now + timedelta(
        seconds=min(body.ttl_seconds, ctx.settings.enrollment_token_max_ttl_seconds)
    )
    await ctx.store.create_enrollment_token(
        EnrollmentToken(
            token_hash=hash_secret(secret),
            entity_id=body.entity_id,
            orchestrator_id=body.orchestrator_id,
            created_at=now,
            expires_at=expires,
            created_by=who.name,
        )
    )
    await audit_action(
        ctx, who, "enrollment_token.create", body.entity_id, orchestrator_id=body.orchestrator_id
    )
    # The secret is shown once; only its hash is stored.
    return {
        "token": secret,
        "entity_id": body.entity_id,
        "orchestrator_id": body.orchestrator_id,
        "expires_at": rfc3339(expires),
    }


@router.get("/enrollment-tokens")
async def list_enrollment_tokens(
    ctx: Ctx, who: Admin, entity_id: Annotated[str | None, Query(max_length=64)] = None
) -> dict[str, Any]:
    tokens = await ctx.store.list_enrollment_tokens(entity_id)
    return {
        "tokens": [
            {
                "entity_id": t.entity_id,
                "orchestrator_id": t.orchestrator_id,
                "created_at": rfc3339(t.created_at),
                "expires_at": rfc3339(t.expires_at),
                "created_by": t.created_by,
                "used_at": rfc3339(t.used_at) if t.used_at else None,
            }
            for t in tokens
        ]
    }


@router.post(
    "/preregistered-keys", status_code=201, openapi_extra=json_body(PreregisteredKeyCreate)
)
async def preregister_key(request: Request, ctx: Ctx, who: Admin) -> dict[str, Any]:
    body, _ = await read_json(request, PreregisteredKeyCreate)
    try:
        public = keys.load_public_key(body.public_key)
        await ctx.store.get_entity(body.entity_id)
    except KeyFormatError as exc:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"public_key: {exc}") from None
    except NotFoundError as exc:
        raise not_found(exc) from None
    record = PreregisteredKey(
        entity_id=body.entity_id,
        orchestrator_id=body.orchestrator_id,
        public_key_pem=keys.public_key_to_pem(public),
        key_id=keys.key_id(public),
        created_at=ctx.clock(),
        created_by=who.name,
    )
    try:
        await ctx.store.preregister_key(record)
    except ConflictError as exc:
        raise ApiError(ErrorCode.CONFLICT, str(exc)) from None
    await audit_action(
        ctx,
        who,
        "key.preregister",
        body.entity_id,
        orchestrator_id=body.orchestrator_id,
        key_id=record.key_id,
    )
    return {
        "entity_id": body.entity_id,
        "orchestrator_id": body.orchestrator_id,
        "key_id": record.key_id,
        "fingerprint": keys.fingerprint(public),
    }


@router.get("/orchestrators")
async def list_orchestrators(
    ctx: Ctx, who: Admin, entity_id: Annotated[str | None, Query(max_length=64)] = None
) -> dict[str, Any]:
    return {
        "orchestrators": [_orchestrator(o) for o in await ctx.store.list_orchestrators(entity_id)]
    }


@router.get("/orchestrators/{entity_id}/{orchestrator_id}")
async def get_orchestrator(
    entity_id: IdPath, orchestrator_id: IdPath, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    try:
        orchestrator = await ctx.store.get_orchestrator(entity_id, orchestrator_id)
    except NotFoundError as exc:
        raise not_found(exc) from None
    beats = await ctx.store.list_heartbeats(entity_id, orchestrator_id, limit=1)
    now = ctx.clock()
    online = bool(
        orchestrator.last_heartbeat_at
        and now - orchestrator.last_heartbeat_at
        <= timedelta(seconds=3 * orchestrator.heartbeat_interval)
    )
    return {
        **_orchestrator(orchestrator),
        "online": online,
        "last_heartbeat": beats[0].body if beats else None,
    }


async def _transition(
    ctx: ServerContext, who: AdminPrincipal, entity_id: str, orchestrator_id: str, action: str
) -> dict[str, Any]:
    operation = {
        "approve": ctx.store.approve,
        "disable": ctx.store.disable,
        "enable": ctx.store.enable,
    }[action]
    try:
        orchestrator = await operation(entity_id, orchestrator_id, ctx.clock())
    except NotFoundError as exc:
        raise not_found(exc) from None
    except ConflictError as exc:
        raise ApiError(ErrorCode.CONFLICT, str(exc)) from None
    if action == "disable":  # its tokens are refused from now on; its open streams end now
        ctx.hub.end_orchestrator(entity_id, orchestrator_id, "gateway disabled")
    await audit_action(
        ctx, who, f"orchestrator.{action}", entity_id, orchestrator_id=orchestrator_id
    )
    return _orchestrator(orchestrator)


@router.post("/orchestrators/{entity_id}/{orchestrator_id}/approve")
async def approve(
    entity_id: IdPath, orchestrator_id: IdPath, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    return await _transition(ctx, who, entity_id, orchestrator_id, "approve")


@router.post("/orchestrators/{entity_id}/{orchestrator_id}/disable")
async def disable(
    entity_id: IdPath, orchestrator_id: IdPath, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    return await _transition(ctx, who, entity_id, orchestrator_id, "disable")


@router.post("/orchestrators/{entity_id}/{orchestrator_id}/enable")
async def enable(
    entity_id: IdPath, orchestrator_id: IdPath, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    return await _transition(ctx, who, entity_id, orchestrator_id, "enable")


@router.get("/orchestrators/{entity_id}/{orchestrator_id}/heartbeats")
async def heartbeats(
    entity_id: IdPath,
    orchestrator_id: IdPath,
    ctx: Ctx,
    who: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    beats = await ctx.store.list_heartbeats(entity_id, orchestrator_id, limit)
    return {"heartbeats": [{"received_at": rfc3339(b.received_at), **b.body} for b in beats]}


@router.post(
    "/orchestrators/{entity_id}/{orchestrator_id}/commands",
    status_code=201,
    openapi_extra=json_body(CommandCreate),
)
async def enqueue_command(
    entity_id: IdPath, orchestrator_id: IdPath, request: Request, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    body, _ = await read_json(request, CommandCreate)
    _check_params(body)
    try:
        await ctx.store.get_orchestrator(entity_id, orchestrator_id)
    except NotFoundError as exc:
        raise not_found(exc) from None
    now = ctx.clock()
    command = Command(
        entity_id=entity_id,
        orchestrator_id=orchestrator_id,
        command_id=f"cmd-{secrets.token_hex(8)}",
        type=body.type,
        params=body.params,
        created_at=now,
        expires_at=now + timedelta(seconds=body.ttl_seconds),
    )
    await ctx.store.enqueue_command(command)
    # A rollout command's params (rollout, wave, reason) say what the operator did.
    steering = {"params": body.params} if body.type in ROLLOUT_COMMANDS else {}
    await audit_action(
        ctx,
        who,
        "command.enqueue",
        entity_id,
        orchestrator_id=orchestrator_id,
        type=body.type,
        **steering,
    )
    return {
        "id": command.command_id,
        "type": command.type,
        "expires_at": rfc3339(command.expires_at),
    }

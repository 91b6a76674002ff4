"""Reports from gateways (protocol §3.16): beacon status batches, firmware install status, task
status and rollout progress, plus the admin views over them."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from navign_proto.wire import (
    BeaconStatusReport,
    ErrorCode,
    FirmwareStatusReport,
    ReportAccepted,
    RolloutState,
    RolloutStatusReport,
    TaskStatusReport,
)
from navign_proto.wire import format_rfc3339 as rfc3339
from navign_server.api.admin import IdPath
from navign_server.api.bodies import json_body, read_json
from navign_server.auth.principals import Admin, Ctx, Gateway
from navign_server.context import ServerContext
from navign_server.errors import ApiError
from navign_server.storage.base import (
    BeaconStatusRecord,
    FirmwareStatusRecord,
    NotFoundError,
    RolloutStatusRecord,
    TaskStatusRecord,
)

router = APIRouter(tags=["reports"])


@router.post(
    "/api/orchestrators/reports/beacons",
    response_model=ReportAccepted,
    openapi_extra=json_body(BeaconStatusReport),
)
async def report_beacons(request: Request, ctx: Ctx, principal: Gateway) -> ReportAccepted:
    body, _ = await read_json(request, BeaconStatusReport)
    principal.require_entity(body.entity_id)
    now = ctx.clock()
    records = [
        BeaconStatusRecord(
            entity_id=principal.entity_id,
            beacon_id=b.beacon_id,
            orchestrator_id=principal.orchestrator_id,
            last_seen=b.last_seen,
            received_at=now,
            body=b.model_dump(mode="json", exclude_none=True),
        )
        for b in body.beacons
    ]
    await ctx.store.record_beacon_statuses(records)
    return ReportAccepted(accepted=len(records))


@router.post(
    "/api/orchestrators/reports/firmware",
    response_model=ReportAccepted,
    openapi_extra=json_body(FirmwareStatusReport),
)
async def report_firmware(request: Request, ctx: Ctx, principal: Gateway) -> ReportAccepted:
    body, _ = await read_json(request, FirmwareStatusReport)
    principal.require_entity(body.entity_id)
    await ctx.store.record_firmware_status(
        FirmwareStatusRecord(
            entity_id=principal.entity_id,
            firmware_id=body.firmware_id,
            beacon_id=body.beacon_id,
            orchestrator_id=principal.orchestrator_id,
            status=body.status.value,
            at=body.at,
            received_at=ctx.clock(),
            body=body.model_dump(mode="json", exclude_none=True),
        )
    )
    return ReportAccepted(accepted=1)


@router.post(
    "/api/orchestrators/reports/tasks",
    response_model=ReportAccepted,
    openapi_extra=json_body(TaskStatusReport),
)
async def report_task(request: Request, ctx: Ctx, principal: Gateway) -> ReportAccepted:
    body, _ = await read_json(request, TaskStatusReport)
    principal.require_entity(body.entity_id)
    await ctx.store.record_task_status(
        TaskStatusRecord(
            entity_id=principal.entity_id,
            task_id=body.task_id,
            orchestrator_id=principal.orchestrator_id,
            status=body.status.value,
            at=body.at,
            received_at=ctx.clock(),
            body=body.model_dump(mode="json", exclude_none=True),
        )
    )
    return ReportAccepted(accepted=1)


@router.post(
    "/api/orchestrators/reports/rollouts",
    response_model=ReportAccepted,
    openapi_extra=json_body(RolloutStatusReport),
)
async def report_rollout(request: Request, ctx: Ctx, principal: Gateway) -> ReportAccepted:
    body, _ = await read_json(request, RolloutStatusReport)
    principal.require_entity(body.entity_id)
    # The newest summary per rollout is kept; a late one from the outbox is taken and ignored.
    await ctx.store.record_rollout_status(
        RolloutStatusRecord(
            entity_id=principal.entity_id,
            rollout_id=body.rollout_id,
            firmware_id=body.firmware_id,
            orchestrator_id=principal.orchestrator_id,
            state=body.state.value,
            at=body.at,
            received_at=ctx.clock(),
            body=body.model_dump(mode="json", exclude_none=True),
        )
    )
    return ReportAccepted(accepted=1)


async def _require_entity(ctx: ServerContext, entity_id: str) -> None:
    try:
        await ctx.store.get_entity(entity_id)
    except NotFoundError:
        raise ApiError(ErrorCode.ENTITY_NOT_FOUND, f"entity {entity_id!r} does not exist") from None


@router.get("/api/admin/entities/{entity_id}/beacon-status")
async def beacon_status(entity_id: IdPath, ctx: Ctx, who: Admin) -> dict[str, Any]:
    records = await ctx.store.list_beacon_statuses(entity_id)
    return {
        "beacons": [
            {**r.body, "reported_by": r.orchestrator_id, "received_at": rfc3339(r.received_at)}
            for r in records
        ]
    }


@router.get("/api/admin/entities/{entity_id}/firmware-status")
async def firmware_status(
    entity_id: IdPath,
    ctx: Ctx,
    who: Admin,
    firmware_id: Annotated[str, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    records = await ctx.store.list_firmware_status(entity_id, firmware_id, limit=10_000)
    latest: dict[str, FirmwareStatusRecord] = {}
    for record in records:  # newest first: the first seen per beacon is its current state
        latest.setdefault(record.beacon_id or "(gateway)", record)
    return {
        "firmware_id": firmware_id,
        "counts": dict(Counter(r.status for r in latest.values())),
        "beacons": {
            k: {**r.body, "received_at": rfc3339(r.received_at)} for k, r in latest.items()
        },
        "recent": [{**r.body, "received_at": rfc3339(r.received_at)} for r in records[:limit]],
    }


@router.get("/api/admin/entities/{entity_id}/task-status")
async def task_status(
    entity_id: IdPath, ctx: Ctx, who: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    records = await ctx.store.list_task_statuses(entity_id, limit=limit)
    return {"tasks": [{**r.body, "received_at": rfc3339(r.received_at)} for r in records]}


@router.get("/api/admin/entities/{entity_id}/rollouts")
async def rollouts(
    entity_id: IdPath,
    ctx: Ctx,
    who: Admin,
    state: Annotated[RolloutState | None, Query()] = None,
    firmware_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Each rollout's latest report, newest first, with the gateway that sent it."""
    await _require_entity(ctx, entity_id)
    records = await ctx.store.list_rollout_statuses(
        entity_id,
        state=None if state is None else state.value,
        firmware_id=firmware_id,
        limit=limit,
    )
    return {
        "rollouts": [
            {**r.body, "reported_by": r.orchestrator_id, "received_at": rfc3339(r.received_at)}
            for r in records
        ]
    }

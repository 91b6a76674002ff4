"""The admin API (``/api/admin/...``): entities and their data, tasks, configuration pushes and
the audit log; gateways are in ``admin_gateways``, releases in ``admin_releases``. Every call is
audit-logged."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from navign_proto.mall import COLLECTIONS, Entity, Identifier, MallData
from navign_proto.wire import ConfigUpdateEvent, ErrorCode, TaskCreateEvent
from navign_proto.wire import format_rfc3339 as rfc3339
from navign_server.api.bodies import json_body, parse_body, read_json, require_json
from navign_server.auth.principals import Admin, AdminPrincipal, Ctx
from navign_server.context import ServerContext
from navign_server.errors import ApiError
from navign_server.storage.base import (
    ConflictError,
    DocumentWrite,
    NotFoundError,
    WriteResult,
)

router = APIRouter(prefix="/api/admin", tags=["admin"])

IdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
CollectionPath = Annotated[str, Path(pattern=r"^(areas|beacons|merchants|connections)$")]


class AdminBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


async def audit_action(
    ctx: ServerContext, who: AdminPrincipal, action: str, entity_id: str | None, **details: Any
) -> None:
    await ctx.audit(who.actor, action, entity_id=entity_id, **details)


def not_found(exc: NotFoundError) -> ApiError:
    code = ErrorCode.ENTITY_NOT_FOUND if exc.kind == "entity" else ErrorCode.NOT_FOUND
    return ApiError(code, str(exc))


def _write_summary(result: WriteResult) -> dict[str, Any]:
    return {
        "seq": result.changes[-1].seq if result.changes else None,
        "changes": len(result.changes),
        "checksums": dict(result.checksums),
    }


# -- entities ---------------------------------------------------------------------------------


@router.get("/entities")
async def list_entities(ctx: Ctx, who: Admin) -> dict[str, Any]:
    return {"entities": await ctx.store.list_entities()}


@router.post("/entities", status_code=201, openapi_extra=json_body(Entity))
async def create_entity(request: Request, ctx: Ctx, who: Admin) -> dict[str, Any]:
    entity, _ = await read_json(request, Entity)
    try:
        await ctx.store.create_entity(entity.document(), ctx.clock())
    except ConflictError as exc:
        raise ApiError(ErrorCode.CONFLICT, str(exc)) from None
    await audit_action(ctx, who, "entity.create", entity.id)
    return entity.document()


@router.get("/entities/{entity_id}")
async def get_entity(entity_id: IdPath, ctx: Ctx, who: Admin) -> dict[str, Any]:
    try:
        state = await ctx.store.entity_state(entity_id)
        document = await ctx.store.get_entity(entity_id)
    except NotFoundError as exc:
        raise not_found(exc) from None
    return {
        "entity": document,
        "seq": state.head,
        "history_floor": state.floor,
        "counts": dict(state.counts),
        "checksums": dict(state.checksums),
    }


@router.put("/entities/{entity_id}", openapi_extra=json_body(Entity))
async def update_entity(
    entity_id: IdPath, request: Request, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    entity, _ = await read_json(request, Entity)
    if entity.id != entity_id:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "id in the body differs from the path")
    try:
        await ctx.store.update_entity(entity.document(), ctx.clock())
    except NotFoundError as exc:
        raise not_found(exc) from None
    await audit_action(ctx, who, "entity.update", entity_id)
    return entity.document()


# -- mall data --------------------------------------------------------------------------------


async def _write(
    ctx: ServerContext,
    who: AdminPrincipal,
    entity_id: str,
    writes: list[DocumentWrite],
    action: str,
) -> WriteResult:
    try:
        result = await ctx.store.write_documents(entity_id, writes, ctx.clock())
    except NotFoundError as exc:
        raise not_found(exc) from None
    except ConflictError as exc:
        raise ApiError(ErrorCode.CONFLICT, str(exc)) from None
    await audit_action(
        ctx, who, action, entity_id, documents=len(writes), changes=len(result.changes)
    )
    return result


def _validated(collection: str, entity_id: str, body: bytes) -> dict[str, Any]:
    model = COLLECTIONS[collection]
    document = parse_body(model, body)
    if document.entity_id != entity_id:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "entity_id in the body differs from the path")
    return document.document()


#: The body of a document write: the model of the collection in the path.
ANY_DOCUMENT = json_body(*COLLECTIONS.values())

# Specific routes first: /entities/{id}/{collection} would otherwise match them.


@router.post("/entities/{entity_id}/import", openapi_extra=json_body(MallData))
async def import_mall(
    entity_id: IdPath,
    request: Request,
    ctx: Ctx,
    who: Admin,
    prune: Annotated[bool, Query()] = False,
) -> dict[str, Any]:
    """Bulk import a mall file (entity + four collections), validated as a whole first.

    Creates the entity if needed; documents are created or updated; with ``prune=true``
    documents absent from the file are deleted. One transaction: all or nothing.
    """
    mall, _ = await read_json(request, MallData)
    if mall.entity.id != entity_id:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "entity.id in the file differs from the path")
    now = ctx.clock()
    try:
        await ctx.store.create_entity(mall.entity.document(), now)
    except ConflictError:
        await ctx.store.update_entity(mall.entity.document(), now)
    documents = mall.documents()
    writes = [
        DocumentWrite(collection, "put", doc["id"], doc)
        for collection, items in documents.items()
        for doc in items
    ]
    if prune:
        for collection, items in documents.items():
            keep = {doc["id"] for doc in items}
            after: str | None = None
            while True:
                page = await ctx.store.list_documents(
                    entity_id, collection, after_id=after, limit=1000
                )
                writes += [
                    DocumentWrite(collection, "delete", d["id"])
                    for d in page
                    if d["id"] not in keep
                ]
                if len(page) < 1000:
                    break
                after = page[-1]["id"]
    result = await _write(ctx, who, entity_id, writes, "mall.import")
    return {
        "entity_id": entity_id,
        "documents": sum(len(v) for v in documents.values()),
        **_write_summary(result),
    }


# -- events for gateways: tasks and configuration ----------------------------------------------


async def _emit(ctx: ServerContext, entity_id: str, event_type: str, data: dict[str, Any]) -> int:
    try:
        await ctx.store.get_entity(entity_id)
    except NotFoundError as exc:
        raise not_found(exc) from None
    event = await ctx.store.append_event(entity_id, event_type, data, ctx.clock())
    return event.seq


class _TaskInput(AdminBody):
    task_id: Identifier | None = None
    type: str = Field(min_length=1, max_length=64)
    priority: str = "normal"
    sources: list[dict[str, Any]] = Field(min_length=1, max_length=64)
    terminals: list[dict[str, Any]] = Field(min_length=1, max_length=64)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


class _ConfigInput(AdminBody):
    type: str = Field(min_length=1, max_length=64)
    config: dict[str, Any] = Field(max_length=256)


@router.post("/entities/{entity_id}/tasks", status_code=201, openapi_extra=json_body(_TaskInput))
async def create_task(entity_id: IdPath, request: Request, ctx: Ctx, who: Admin) -> dict[str, Any]:
    raw, _ = await read_json(request, _TaskInput)
    data = {
        "task_id": raw.task_id or f"task-{secrets.token_hex(6)}",
        "entity_id": entity_id,
        **raw.model_dump(mode="json", exclude={"task_id"}, exclude_none=True),
        "created_at": rfc3339(ctx.clock()),
    }
    try:
        event = TaskCreateEvent.model_validate(data)
    except ValidationError as exc:
        raise ApiError(ErrorCode.VALIDATION_ERROR, str(exc.errors()[0]["msg"])) from None
    seq = await _emit(
        ctx, entity_id, "task_create", event.model_dump(mode="json", exclude_none=True)
    )
    await audit_action(ctx, who, "task.create", entity_id, task_id=event.task_id)
    return {"task_id": event.task_id, "seq": seq}


@router.post("/entities/{entity_id}/config", status_code=201, openapi_extra=json_body(_ConfigInput))
async def push_config(entity_id: IdPath, request: Request, ctx: Ctx, who: Admin) -> dict[str, Any]:
    body, _ = await read_json(request, _ConfigInput)
    # Gateways apply the newest version of each config type; milliseconds since the epoch
    # increase with every push (the event's sequence number orders them exactly).
    data = {
        "type": body.type,
        "config": body.config,
        "version": int(ctx.clock().timestamp() * 1000),
    }
    try:
        event = ConfigUpdateEvent.model_validate(data)
    except ValidationError as exc:
        raise ApiError(ErrorCode.VALIDATION_ERROR, str(exc.errors()[0]["msg"])) from None
    seq = await _emit(ctx, entity_id, "config_update", event.model_dump(mode="json"))
    await audit_action(ctx, who, "config.push", entity_id, type=body.type)
    return {"seq": seq}


@router.get("/entities/{entity_id}/{collection}")
async def list_documents(
    entity_id: IdPath,
    collection: CollectionPath,
    ctx: Ctx,
    who: Admin,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    try:
        await ctx.store.get_entity(entity_id)
        documents = await ctx.store.list_documents(
            entity_id, collection, after_id=after, limit=limit
        )
    except NotFoundError as exc:
        raise not_found(exc) from None
    next_after = documents[-1]["id"] if len(documents) == limit else None
    return {"documents": documents, "next_after": next_after}


@router.post("/entities/{entity_id}/{collection}", status_code=201, openapi_extra=ANY_DOCUMENT)
async def create_document(
    entity_id: IdPath, collection: CollectionPath, request: Request, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    require_json(request)
    document = _validated(collection, entity_id, await request.body())
    result = await _write(
        ctx,
        who,
        entity_id,
        [DocumentWrite(collection, "create", document["id"], document)],
        f"{collection}.create",
    )
    return {"document": document, **_write_summary(result)}


@router.get("/entities/{entity_id}/{collection}/{doc_id}")
async def get_document(
    entity_id: IdPath, collection: CollectionPath, doc_id: IdPath, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    try:
        return await ctx.store.get_document(entity_id, collection, doc_id)
    except NotFoundError as exc:
        raise not_found(exc) from None


@router.put("/entities/{entity_id}/{collection}/{doc_id}", openapi_extra=ANY_DOCUMENT)
async def update_document(
    entity_id: IdPath,
    collection: CollectionPath,
    doc_id: IdPath,
    request: Request,
    ctx: Ctx,
    who: Admin,
) -> dict[str, Any]:
    require_json(request)
    document = _validated(collection, entity_id, await request.body())
    if document["id"] != doc_id:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "id in the body differs from the path")
    result = await _write(
        ctx,
        who,
        entity_id,
        [DocumentWrite(collection, "update", doc_id, document)],
        f"{collection}.update",
    )
    return {"document": document, **_write_summary(result)}


@router.delete("/entities/{entity_id}/{collection}/{doc_id}")
async def delete_document(
    entity_id: IdPath, collection: CollectionPath, doc_id: IdPath, ctx: Ctx, who: Admin
) -> dict[str, Any]:
    result = await _write(
        ctx, who, entity_id, [DocumentWrite(collection, "delete", doc_id)], f"{collection}.delete"
    )
    return _write_summary(result)


@router.get("/audit")
async def audit_log(
    ctx: Ctx,
    who: Admin,
    entity_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    records = await ctx.store.list_audit(entity_id=entity_id, limit=limit)
    return {
        "records": [
            {
                "at": rfc3339(r.at),
                "actor": r.actor,
                "action": r.action,
                "outcome": r.outcome,
                "entity_id": r.entity_id,
                "details": r.details,
            }
            for r in records
        ]
    }

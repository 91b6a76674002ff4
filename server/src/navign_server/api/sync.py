"""Mall data sync for gateways (docs/protocol.md §3.4-3.6, §5)."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator

from navign_proto.checksums import COLLECTIONS
from navign_proto.wire import ChecksumResponse, ErrorCode, SyncDeltaResponse, SyncFullResponse
from navign_proto.wire import format_rfc3339 as rfc3339
from navign_server.auth.principals import Ctx, Gateway
from navign_server.errors import ApiError
from navign_server.storage.base import Change, HistoryExpiredError, NotFoundError

router = APIRouter(prefix="/api/orchestrators/sync", tags=["sync"])

DELTA_DEFAULT_LIMIT = 500
DELTA_MAX_LIMIT = 5000

EntityParam = Annotated[str | None, Query(max_length=64)]
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339_only(value: object) -> object:
    """``since`` is an RFC 3339 timestamp with an offset; pydantic alone would also take
    ``0.5`` (seconds since the epoch) or a date without a time."""
    if isinstance(value, str) and not _RFC3339_RE.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 timestamp with a UTC offset, e.g. 2025-01-08T10:00:00Z"
        )
    return value


def _entity(principal: Gateway, entity_id: str | None) -> str:
    principal.require_entity(entity_id)
    return principal.entity_id


def _collections(include: str | None) -> list[str]:
    if include is None or include.strip() == "":
        return list(COLLECTIONS)
    names = [name.strip() for name in include.split(",") if name.strip()]
    unknown = [name for name in names if name not in COLLECTIONS]
    if unknown or not names:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"include: unknown collection(s) {', '.join(unknown) or '(none)'}; "
            f"use a subset of {','.join(COLLECTIONS)}",
        )
    return [name for name in COLLECTIONS if name in names]


def _sync_id(kind: str, entity_id: str, seq: int) -> str:
    return f"{kind}-{entity_id}-{seq}-{secrets.token_hex(4)}"


@router.get("/full", response_model=SyncFullResponse)
async def sync_full(
    ctx: Ctx,
    principal: Gateway,
    entity_id: EntityParam = None,
    include: Annotated[str | None, Query(max_length=200)] = None,
    format: Annotated[str, Query(pattern="^compact$")] = "compact",
) -> JSONResponse:
    entity = _entity(principal, entity_id)
    collections = _collections(include)
    try:
        with ctx.metrics.sync_seconds.labels("full").time():
            snapshot = await ctx.store.snapshot(entity, collections)
    except NotFoundError:
        raise ApiError(ErrorCode.ENTITY_NOT_FOUND, f"entity {entity!r} does not exist") from None
    body: dict[str, Any] = {
        "entity_id": entity,
        "sync_id": _sync_id("full", entity, snapshot.seq),
        "timestamp": rfc3339(snapshot.taken_at),
        "seq": snapshot.seq,
        "checksum": snapshot.checksums["global"],
        "data": {name: snapshot.documents.get(name, []) for name in collections},
        "metadata": {f"total_{name}": snapshot.counts[name] for name in COLLECTIONS},
    }
    if set(collections) == set(COLLECTIONS):  # protocol §3.4: absent for a narrower include
        body["entity"] = snapshot.entity
    # Documents are served as stored; building pydantic models of 50,000 of them would only
    # slow the response down (the models are the documented schema, see response_model).
    return JSONResponse(body)


def _change(change: Change) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": change.collection,
        "operation": change.operation,
        "id": change.id,
        "updated_at": rfc3339(change.updated_at),
        "seq": change.seq,
    }
    if change.data is not None:
        item["data"] = change.data
    return item


@router.get("/delta", response_model=SyncDeltaResponse)
async def sync_delta(
    ctx: Ctx,
    principal: Gateway,
    entity_id: EntityParam = None,
    cursor: Annotated[int | None, Query(ge=0, le=2**53 - 1)] = None,
    since: Annotated[datetime | None, BeforeValidator(_rfc3339_only), Query()] = None,
    limit: Annotated[int, Query(ge=1, le=DELTA_MAX_LIMIT)] = DELTA_DEFAULT_LIMIT,
) -> JSONResponse:
    entity = _entity(principal, entity_id)
    if (cursor is None) == (since is None):
        raise ApiError(ErrorCode.VALIDATION_ERROR, "give exactly one of cursor and since")
    try:
        if since is not None:
            if since.tzinfo is None:
                raise ApiError(ErrorCode.VALIDATION_ERROR, "since: must carry a UTC offset")
            cursor = await ctx.store.seq_at(entity, since)
        assert cursor is not None
        with ctx.metrics.sync_seconds.labels("delta").time():
            page = await ctx.store.changes_since(entity, cursor, limit)
    except NotFoundError:
        raise ApiError(ErrorCode.ENTITY_NOT_FOUND, f"entity {entity!r} does not exist") from None
    except HistoryExpiredError as exc:
        raise ApiError(
            ErrorCode.SYNC_CURSOR_EXPIRED,
            "the change log no longer covers this cursor; run a full sync",
            details={"cursor": exc.cursor, "floor": exc.floor, "head": exc.head},
        ) from None
    body = {
        "entity_id": entity,
        "sync_id": _sync_id("delta", entity, page.next_cursor),
        "timestamp": rfc3339(ctx.clock()),
        "base_checksum": page.base_checksum,
        "new_checksum": page.new_checksum,
        "changes": [_change(c) for c in page.changes],
        "has_more": page.has_more,
        "next_cursor": str(page.next_cursor),
    }
    return JSONResponse(body)


@router.get("/checksum", response_model=ChecksumResponse)
async def sync_checksum(
    ctx: Ctx, principal: Gateway, entity_id: EntityParam = None
) -> JSONResponse:
    entity = _entity(principal, entity_id)
    try:
        state = await ctx.store.entity_state(entity)
    except NotFoundError:
        raise ApiError(ErrorCode.ENTITY_NOT_FOUND, f"entity {entity!r} does not exist") from None
    return JSONResponse(
        {
            "entity_id": entity,
            "timestamp": rfc3339(ctx.clock()),
            "seq": state.head,
            "checksums": dict(state.checksums),
        }
    )

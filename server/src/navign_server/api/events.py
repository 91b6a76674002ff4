"""``GET /api/orchestrators/events``: the gateway's Server-Sent Events stream (protocol §4)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import anyio
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from navign_proto.checksums import COLLECTIONS
from navign_proto.wire import ErrorCode
from navign_proto.wire import format_rfc3339 as rfc3339
from navign_server.auth.principals import Ctx, Gateway
from navign_server.context import ServerContext
from navign_server.errors import ApiError
from navign_server.events.hub import Subscription, SubscriptionClosedError
from navign_server.ratelimit import retry_after_header
from navign_server.storage.base import HistoryExpiredError, StoredEvent

router = APIRouter(prefix="/api/orchestrators", tags=["events"])

#: Events read from the store per replay page.
REPLAY_PAGE = 500
#: The reconnection delay we suggest (``retry:``), plus up to RETRY_JITTER_MS of random jitter
#: so that thousands of gateways do not reconnect in the same instant after a deploy.
RETRY_BASE_MS = 2000
RETRY_JITTER_MS = 3000
#: A blocked write to a dead client is given up after this many seconds.
SEND_TIMEOUT_SECONDS = 30.0
#: On server shutdown a stream gets this long to end by itself before it is cancelled.
SHUTDOWN_GRACE_SECONDS = 3.0
_LAST_EVENT_ID_RE = re.compile(r"(?:evt-)?([0-9]{1,16})")


def parse_last_event_id(value: str | None) -> int | None:
    """Our ids are decimal sequence numbers; the seed's ``evt-N`` form is accepted too."""
    if value is None or value.strip() == "":
        return None
    match = _LAST_EVENT_ID_RE.fullmatch(value.strip())
    if match is None:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "Last-Event-ID must be a sequence number")
    return int(match.group(1))


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _frame(event: StoredEvent) -> ServerSentEvent:
    return ServerSentEvent(data=_json(event.data), event=event.type, id=str(event.seq))


async def _events(
    ctx: ServerContext, principal: Gateway, last_event_id: int | None, shutdown: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    published = ctx.metrics.events_published
    ctx.metrics.sse_connections.inc()
    try:
        async for frame in _stream(ctx, principal, last_event_id, shutdown):
            if frame.event:
                published.labels(frame.event).inc()
            yield frame
    finally:
        ctx.metrics.sse_connections.dec()


async def _end_on_shutdown(shutdown: anyio.Event, subscription: Subscription) -> None:
    await shutdown.wait()
    subscription.end("server shutting down")


async def _stream(
    ctx: ServerContext, principal: Gateway, last_event_id: int | None, shutdown: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    entity_id = principal.entity_id
    deadline = principal.claims.expires_at
    # Subscribe before reading history: whatever commits meanwhile is queued, and the
    # overlap with the replay is dropped by sequence number below.
    async with ctx.hub.subscription(entity_id) as subscription:
        # On shutdown the stream ends by itself, so the response completes properly.
        watcher = asyncio.create_task(_end_on_shutdown(shutdown, subscription))
        try:
            async for frame in _frames(ctx, entity_id, deadline, last_event_id, subscription):
                yield frame
        finally:
            watcher.cancel()


async def _frames(
    ctx: ServerContext,
    entity_id: str,
    deadline: datetime,
    last_event_id: int | None,
    subscription: Subscription,
) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(
        comment="navign events",
        # secrets, not random: the global random state is not ours to advance (Hypothesis in the
        # API fuzz test, running in the same process, checks that nobody else does).
        retry=RETRY_BASE_MS + secrets.randbelow(RETRY_JITTER_MS),
    )
    if last_event_id is None:
        position = (await ctx.store.entity_state(entity_id)).head
    else:
        position = last_event_id
        try:
            while True:
                page = await ctx.store.events_since(entity_id, position, REPLAY_PAGE)
                for event in page:
                    yield _frame(event)
                    position = event.seq
                if len(page) < REPLAY_PAGE:
                    break
        except HistoryExpiredError as exc:
            yield ServerSentEvent(
                event="resync_required",
                data=_json(
                    {
                        "reason": "event history no longer covers Last-Event-ID "
                        f"{last_event_id} (retained {exc.floor}..{exc.head})",
                        "collections": list(COLLECTIONS),
                    }
                ),
            )
            position = (await ctx.store.entity_state(entity_id)).head
    while True:
        remaining = (deadline - ctx.clock()).total_seconds()
        if remaining <= 0:
            return  # token expired: the gateway refreshes it and reconnects
        try:
            live = await subscription.next(wait=min(remaining, 60.0))
        except SubscriptionClosedError:
            return  # fell behind or shutting down: reconnect with Last-Event-ID
        if live is None or live.seq <= position:
            continue
        yield _frame(live)
        position = live.seq


#: The header the handler reads itself, documented for clients (and the API fuzzer).
LAST_EVENT_ID_PARAMETER = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this event (its sequence number; the seed's evt-N too)",
    "schema": {"type": "string", "pattern": f"^{_LAST_EVENT_ID_RE.pattern}$"},
}


@router.get(
    "/events",
    response_class=EventSourceResponse,
    openapi_extra={"parameters": [LAST_EVENT_ID_PARAMETER]},
)
async def events(request: Request, ctx: Ctx, principal: Gateway) -> EventSourceResponse:
    wait = ctx.limits.stream_open.acquire(f"orch:{principal.entity_id}/{principal.orchestrator_id}")
    if wait:
        raise ApiError(
            ErrorCode.RATE_LIMIT_EXCEEDED,
            "reconnecting too often",
            headers=retry_after_header(wait),
        )
    if request.headers.get("x-entity-id") is None:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "X-Entity-ID header is required")
    last_event_id = parse_last_event_id(request.headers.get("last-event-id"))

    def ping() -> ServerSentEvent:
        return ServerSentEvent(event="ping", data=_json({"server_time": rfc3339(ctx.clock())}))

    shutdown = anyio.Event()
    return EventSourceResponse(
        _events(ctx, principal, last_event_id, shutdown),
        ping=ctx.settings.sse_ping_seconds,
        ping_message_factory=ping,
        send_timeout=SEND_TIMEOUT_SECONDS,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )

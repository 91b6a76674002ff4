"""``GET /api/orchestrators/events``: the gateway's Server-Sent Events stream (protocol §4)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from navign_proto.checksums import COLLECTIONS
from navign_proto.wire import ErrorCode
from navign_proto.wire import format_rfc3339 as rfc3339
from navign_server.auth.principals import Ctx, Gateway
from navign_server.context import ServerContext
from navign_server.errors import ApiError
from navign_server.events.hub import SubscriptionClosedError, encode_frame
from navign_server.ratelimit import retry_after_header
from navign_server.storage.base import HistoryExpiredError

router = APIRouter(prefix="/api/orchestrators", tags=["events"])

#: Events read from the store per replay page.
REPLAY_PAGE = 500
#: Replay stops after this many pages (5,000,000 events); the live stream then catches up.
MAX_REPLAY_PAGES = 10_000
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


async def _events(
    ctx: ServerContext, principal: Gateway, last_event_id: int | None
) -> AsyncIterator[ServerSentEvent | bytes]:
    published = ctx.metrics.events_published
    ctx.metrics.sse_connections.inc()
    try:
        async for frame in _stream(ctx, principal, last_event_id):
            if isinstance(frame, tuple):
                published.labels(frame[0]).inc()
                yield frame[1]
            else:
                yield frame
    finally:
        ctx.metrics.sse_connections.dec()


async def _stream(
    ctx: ServerContext, principal: Gateway, last_event_id: int | None
) -> AsyncIterator[ServerSentEvent | tuple[str, bytes]]:
    entity_id = principal.entity_id
    # Subscribe before reading history: whatever commits meanwhile is queued, and the overlap
    # with the replay is dropped by sequence number below. The hub ends the subscription when
    # the token expires (the gateway refreshes it and reconnects) or the server shuts down.
    async with ctx.hub.subscription(entity_id, principal.claims.expires_at) as subscription:
        yield ServerSentEvent(
            comment="navign events", retry=RETRY_BASE_MS + secrets.randbelow(RETRY_JITTER_MS)
        )
        if last_event_id is None:
            position = (await ctx.store.entity_state(entity_id)).head
        else:
            position = last_event_id
            try:
                for _ in range(MAX_REPLAY_PAGES):
                    page = await ctx.store.events_since(entity_id, position, REPLAY_PAGE)
                    for event in page:
                        yield event.type, encode_frame(event)
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
            try:
                live = await subscription.next()
            except SubscriptionClosedError:
                return  # fell behind, token expired or shutting down: the gateway reconnects
            if live is not None and live.seq > position:
                yield live.type, live.frame
                position = live.seq


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

    return EventSourceResponse(
        _events(ctx, principal, last_event_id),
        ping=ctx.settings.sse_ping_seconds,
        ping_message_factory=ping,
        send_timeout=SEND_TIMEOUT_SECONDS,
        shutdown_event=ctx.hub.shutdown_signal,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )

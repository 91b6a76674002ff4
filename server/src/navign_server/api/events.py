"""``GET /api/orchestrators/events``: the gateway's Server-Sent Events stream (protocol §4).

The stream is a plain ASGI endpoint that the app calls before its middleware stack, not a
FastAPI route with an ``EventSourceResponse``: a stream lives for an hour or more, and
everything the request machinery holds for its whole life is multiplied by every connected
gateway. FastAPI keeps six middleware frames, its dependency exit stack and request objects,
and sse-starlette runs four tasks in an anyio task group per response; measured with
``bench/sse_fanout.py`` that came to about 48 KiB per idle stream. Here a stream is its own
ASGI task plus one small task that waits for the client's disconnect; keepalive pings, token
expiry, stalled sends and shutdown are handled hub-wide (:mod:`navign_server.events.hub`).
docs/decisions.md has the figures.

Authentication and rate limits are the same code as every other gateway endpoint, and
refusals are the same JSON error envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from typing import Any

from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from navign_proto.checksums import COLLECTIONS
from navign_proto.wire import ErrorCode
from navign_server.auth.principals import gateway
from navign_server.context import ServerContext
from navign_server.errors import REQUEST_ID_HEADER, ApiError, error_response, request_id_for
from navign_server.events.hub import (
    LiveEvent,
    Subscription,
    SubscriptionClosedError,
    encode_frame,
    encode_unsequenced,
)
from navign_server.ratelimit import retry_after_header
from navign_server.storage.base import HistoryExpiredError

log = logging.getLogger(__name__)

PATH = "/api/orchestrators/events"
#: Events read from the store per replay page.
REPLAY_PAGE = 500
#: Replay stops after this many pages (5,000,000 events); the live stream then catches up.
MAX_REPLAY_PAGES = 10_000
#: The reconnection delay we suggest (``retry:``), plus up to RETRY_JITTER_MS of random jitter
#: so that thousands of gateways do not reconnect in the same instant after a deploy.
RETRY_BASE_MS = 2000
RETRY_JITTER_MS = 3000
_LAST_EVENT_ID_RE = re.compile(r"(?:evt-)?([0-9]{1,16})")
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class UnparseableEventIdError(ValueError):
    pass


def parse_last_event_id(value: str | None) -> int | None:
    """Our ids are decimal sequence numbers; the seed's ``evt-N`` form is accepted too.
    Raises UnparseableEventIdError for anything else (answered with ``resync_required``)."""
    if value is None or value.strip() == "":
        return None
    match = _LAST_EVENT_ID_RE.fullmatch(value.strip())
    if match is None:
        raise UnparseableEventIdError(value)
    return int(match.group(1))


def _resync(reason: str) -> bytes:
    return encode_unsequenced(
        "resync_required", {"reason": reason[:256], "collections": list(COLLECTIONS)}
    )


class EventStreamEndpoint:
    """The ASGI application of ``/api/orchestrators/events``, called by the app before its
    middleware stack (:class:`navign_server.app.NavignApp`). It assigns the request id and
    answers refusals with the JSON error envelope itself, as that stack would."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        ctx = request.app.state.ctx
        assert isinstance(ctx, ServerContext)
        try:
            subscription, raw_id = await _open(ctx, request)
        except ApiError as exc:
            ctx.metrics.errors.labels(exc.code.value).inc()
            headers = dict(exc.headers or {})
            if exc.code is ErrorCode.METHOD_NOT_ALLOWED:
                headers["Allow"] = "GET"
            response = error_response(
                exc.code, exc.message, request_id, details=exc.details, headers=headers
            )
            await response(scope, receive, send)
            return
        del request  # held no longer than needed: the stream lives for an hour
        ctx.metrics.sse_connections.inc()
        watcher = asyncio.create_task(_end_on_disconnect(receive, subscription))
        try:
            await _stream(ctx, subscription, raw_id, send, request_id)
        except asyncio.CancelledError:
            if not subscription.stalled:
                raise
            # Cancelled by the hub's sweep: the gateway stopped reading. Closing is all that is
            # left (uvicorn closes a response that was never completed).
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.warning(
                "event stream of %s/%s stalled; closed",
                subscription.entity_id,
                subscription.orchestrator_id,
            )
        finally:
            watcher.cancel()
            subscription.close()
            ctx.metrics.sse_connections.dec()


async def _open(ctx: ServerContext, request: Request) -> tuple[Subscription, str | None]:
    """Authenticate and subscribe; ApiError for every refusal."""
    if request.method != "GET":
        raise ApiError(ErrorCode.METHOD_NOT_ALLOWED, "the event stream answers GET only")
    principal = await gateway(request, ctx)
    wait = ctx.limits.stream_open.acquire(f"orch:{principal.entity_id}/{principal.orchestrator_id}")
    if wait:
        raise ApiError(
            ErrorCode.RATE_LIMIT_EXCEEDED,
            "reconnecting too often",
            headers=retry_after_header(wait),
        )
    if request.headers.get("x-entity-id") is None:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "X-Entity-ID header is required")
    try:
        subscription = ctx.hub.subscribe(
            principal.entity_id, principal.orchestrator_id, principal.claims.expires_at
        )
    except SubscriptionClosedError:
        raise ApiError(
            ErrorCode.SERVICE_UNAVAILABLE, "server shutting down", headers={"Retry-After": "5"}
        ) from None
    return subscription, request.headers.get("last-event-id")


async def _end_on_disconnect(receive: Receive, subscription: Subscription) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
    subscription.end("client disconnected")


async def _stream(
    ctx: ServerContext, subscription: Subscription, raw_id: str | None, send: Send, request_id: str
) -> None:
    loop = asyncio.get_running_loop()
    published = ctx.metrics.events_published

    async def write(body: bytes) -> None:
        subscription.send_started = loop.time()
        await send({"type": "http.response.body", "body": body, "more_body": True})
        subscription.send_started = 0.0

    # Subscribed before reading history: whatever commits meanwhile is queued, and the overlap
    # with the replay is dropped by sequence number below.
    headers = [*_HEADERS, (b"x-request-id", request_id.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    opening = ServerSentEvent(
        comment="navign events", retry=RETRY_BASE_MS + secrets.randbelow(RETRY_JITTER_MS)
    )
    await write(opening.encode())
    entity_id = subscription.entity_id
    try:
        last_event_id = parse_last_event_id(raw_id)
    except UnparseableEventIdError:
        await write(_resync(f"last_event_id_unknown: {raw_id!r} is not a sequence number"))
        last_event_id = None
    if last_event_id is None:
        position = (await ctx.store.entity_state(entity_id)).head
    else:
        position = last_event_id
        try:
            for _ in range(MAX_REPLAY_PAGES):
                page = await ctx.store.events_since(entity_id, position, REPLAY_PAGE)
                if page:
                    await write(b"".join(encode_frame(event) for event in page))
                    for event in page:
                        published.labels(event.type).inc()
                    position = page[-1].seq
                if len(page) < REPLAY_PAGE:
                    break
        except HistoryExpiredError as exc:
            case = "expired" if last_event_id < exc.floor else "unknown"
            await write(
                _resync(
                    f"last_event_id_{case}: history no longer covers {last_event_id} "
                    f"(retained {exc.floor}..{exc.head})"
                )
            )
            position = (await ctx.store.entity_state(entity_id)).head
    while True:
        try:
            batch = await subscription.take()
        except SubscriptionClosedError:
            break  # fell behind, token expired, disabled, disconnected or shutting down
        frames = _fresh(batch, position)
        if frames:
            await write(b"".join(live.frame for live in frames))
            for live in frames:
                published.labels(live.type).inc()
                if live.seq is not None:
                    position = live.seq
    with contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _fresh(batch: list[LiveEvent], position: int) -> list[LiveEvent]:
    """The frames not already sent by the replay (pings always)."""
    return [live for live in batch if live.seq is None or live.seq > position]


#: The OpenAPI description of the stream (the route is plain ASGI, so FastAPI cannot derive it).
OPENAPI_PATH_ITEM: dict[str, Any] = {
    "get": {
        "tags": ["events"],
        "summary": "Events",
        "operationId": "events_api_orchestrators_events_get",
        "description": "The gateway's Server-Sent Events stream (docs/protocol.md §4).",
        "parameters": [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Resume after this event (its sequence number; the seed's evt-N "
                "too)",
                "schema": {"type": "string"},
            }
        ],
        "responses": {
            "200": {
                "description": "The event stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "4XX": {
                "description": "The JSON error envelope",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}
                },
            },
        },
    }
}

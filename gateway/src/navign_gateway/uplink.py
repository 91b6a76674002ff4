"""The gateway's connection to the central server: a reconnecting state machine.

One loop (:meth:`Uplink.run`) owns the connection:

    CONNECTING ─ token, catch-up sync, open the event stream ─▶ CONNECTED
        ▲                                                        │ stream ends, watchdog fires,
        │            backoff 1 s … 60 s with jitter,             │ server or network error
        └──────────── never below the server's retry: ◀──────────┘ (OFFLINE while waiting)

    PENDING_APPROVAL: registration waits for an administrator; retried after Retry-After.
    REFUSED: enrollment token refused, key mismatch, gateway disabled: the loop stops loudly
             (protocol §1.7) and the gateway keeps serving the mall from its local copy.

The event stream (protocol §4) resumes from the last handled event id, kept in the database. A
new copy connects with the id of its full sync, so nothing between the two is missed (§4.3).
Events are handled in order and idempotently (they can be replayed); an event whose payload is
invalid is logged and its id still advances, so one bad event cannot wedge the stream. A
separate task refreshes the token at about 80 % of its life.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from navign_gateway.backoff import Backoff, FailureLog
from navign_gateway.credentials import (
    REFUSALS,
    Credentials,
    PendingApprovalError,
    UplinkRefusedError,
)
from navign_gateway.db import Database
from navign_gateway.sse import EventStreamParser, SSEIdleTimeout, SSEProtocolError, iter_sse
from navign_gateway.sync import SyncEngine, SyncError
from navign_gateway.upstream import Upstream, UpstreamError, raise_for_error
from navign_proto.wire import (
    InvalidMessageError,
    KnownEvent,
    MalformedMessageError,
    UnknownEvent,
    parse_event,
)

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/orchestrators/events"
STATE_LAST_EVENT_ID = "events.last_id"
#: Keepalive interval of the server (protocol §4.1); no bytes for 2.5 of them → reconnect.
PING_SECONDS = 15.0
WATCHDOG_FACTOR = 2.5
#: A connection that lasted this long resets the backoff.
STABLE_SECONDS = 30.0
UNSEQUENCED = frozenset({"ping", "resync_required"})
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)

Handler = Callable[[Any], Awaitable[None]]


class UplinkState(enum.StrEnum):
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    OFFLINE = "OFFLINE"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    REFUSED = "REFUSED"


class UplinkMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.events = Counter(
            "orchestrator_events_received",
            "Events received on the server's stream, by type",
            ["type"],
            registry=registry,
        )
        self.event_errors = Counter(
            "orchestrator_event_errors",
            "Events that could not be handled, by type",
            ["type"],
            registry=registry,
        )
        self.reconnects = Counter(
            "orchestrator_uplink_reconnects", "Event stream reconnections", registry=registry
        )
        self.connected = Gauge(
            "orchestrator_uplink_connected", "1 while the event stream is open", registry=registry
        )


class Uplink:
    def __init__(
        self,
        *,
        upstream: Upstream,
        credentials: Credentials,
        db: Database,
        sync: SyncEngine,
        handlers: Mapping[str, Handler],
        registry: CollectorRegistry | None = None,
        ping_seconds: float = PING_SECONDS,
        backoff: Backoff | None = None,
        on_state: Callable[[UplinkState], None] | None = None,
    ) -> None:
        self._upstream = upstream
        self._credentials = credentials
        self._db = db
        self._sync = sync
        self._handlers = dict(handlers)
        #: The SSE id of the event being handled (its seq, for sequenced events), for handlers.
        self.current_event_id = ""
        self._metrics = UplinkMetrics(registry)
        self._idle_timeout = ping_seconds * WATCHDOG_FACTOR
        self._backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self._failures = FailureLog(log, "uplink")
        self._on_state = on_state
        self.state = UplinkState.CONNECTING
        self.refused: UplinkRefusedError | None = None
        self._server_retry: float | None = None
        self._stopping = asyncio.Event()
        self._saved_id: str | None = None

    def _set_state(self, state: UplinkState) -> None:
        if state is not self.state:
            log.debug("uplink %s -> %s", self.state, state)
            self.state = state
            self._metrics.connected.set(1 if state is UplinkState.CONNECTED else 0)
            if self._on_state is not None:
                self._on_state(state)

    def stop(self) -> None:
        self._stopping.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self) -> None:
        """Until :meth:`stop` or a refusal; never gives up on ordinary failures."""
        refresher = asyncio.create_task(self._refresh_tokens(), name="token-refresh")
        try:
            while not self._stopping.is_set():
                self._set_state(UplinkState.CONNECTING)
                started = time.monotonic()
                try:
                    await self._connect_once()
                    self._failures.recovered()
                except UplinkRefusedError as exc:
                    self.refused = exc
                    self._set_state(UplinkState.REFUSED)
                    log.error(
                        "the server refused this gateway (%s); the uplink stops until the "
                        "configuration changes. The mall is still served from the local copy.",
                        exc,
                    )
                    return
                except PendingApprovalError as exc:
                    self._set_state(UplinkState.PENDING_APPROVAL)
                    self._failures.failed(f"{exc}; an administrator must approve key {exc.key_id}")
                    await self._sleep(self._backoff.next_delay(floor=exc.retry_after))
                    continue
                except UpstreamError as exc:
                    if exc.code in REFUSALS:  # e.g. ORCHESTRATOR_DISABLED on any request
                        self.refused = UplinkRefusedError(exc.code or "", exc.message)
                        self._set_state(UplinkState.REFUSED)
                        log.error(
                            "the server refused this gateway (%s); the uplink stops until the "
                            "configuration changes. The mall is still served from the local copy.",
                            self.refused,
                        )
                        return
                    self._failures.failed(exc)
                except (
                    SyncError,
                    SSEIdleTimeout,
                    SSEProtocolError,
                    aiohttp.ClientError,
                    TimeoutError,
                    OSError,
                ) as exc:
                    self._failures.failed(exc)
                except Exception as exc:  # a gateway runs for months: never die of one failure
                    # A bug or an unexpected failure (a full disk under SQLite...): logged with
                    # its traceback once, then retried like any other failure.
                    if self._failures.failures == 0:
                        log.exception("uplink: unexpected failure")
                    self._failures.failed(exc)
                floor = self._server_retry
                if time.monotonic() - started > STABLE_SECONDS:
                    self._backoff.reset()
                self._set_state(UplinkState.OFFLINE)
                self._metrics.reconnects.inc()
                await self._sleep(self._backoff.next_delay(floor=floor))
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            self._metrics.connected.set(0)

    async def _refresh_tokens(self) -> None:
        backoff = Backoff(initial=5.0, maximum=300.0)
        while True:
            if not self._credentials.has_token:
                await asyncio.sleep(5.0)  # the main loop registers first
                continue
            await asyncio.sleep(self._credentials.refresh_delay())
            try:
                await self._credentials.refresh_now()
                backoff.reset()
            except (UplinkRefusedError, PendingApprovalError):
                return  # the main loop reports it on its next request
            except (UpstreamError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("token refresh failed (%s); retrying", exc)
                await asyncio.sleep(backoff.next_delay())

    async def _connect_once(self) -> None:
        await self._credentials.token()
        if self._credentials.initial_sync_required or await self._sync.cursor() is None:
            result = await self._sync.full()
            self._credentials.initial_sync_required = False
            await self.reset_event_cursor(result.seq)
        else:
            await self._sync.delta()
        await self._stream()

    async def _stream(self) -> None:
        last_id = await self._db.get_state(STATE_LAST_EVENT_ID)
        if last_id is None:
            cursor = await self._sync.cursor()
            last_id = None if cursor is None else str(cursor)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        async with self._upstream.request(
            "GET", EVENTS_PATH, headers=headers, limits=STREAM_TIMEOUT
        ) as response:
            await raise_for_error(response)
            self._set_state(UplinkState.CONNECTED)
            parser = EventStreamParser(last_event_id=last_id or "")
            try:
                async for message in iter_sse(
                    response.content, parser, idle_timeout=self._idle_timeout
                ):
                    if parser.retry is not None:
                        self._server_retry = parser.retry / 1000.0
                    await self._handle(message.event, message.data, message.last_event_id)
                    if self._stopping.is_set():
                        return
            finally:
                # The opening retry: block dispatches no message: read it at the end too.
                if parser.retry is not None:
                    self._server_retry = parser.retry / 1000.0

    async def _handle(self, event_type: str, data: str, event_id: str) -> None:
        self._metrics.events.labels(event_type if event_type in self._handlers else "other").inc()
        try:
            event = parse_event(event_type, data)
        except (InvalidMessageError, MalformedMessageError) as exc:
            self._metrics.event_errors.labels(event_type).inc()
            log.error("event %s (id %s) is invalid and is skipped: %s", event_type, event_id, exc)
            await self._advance(event_type, event_id)
            return
        if isinstance(event, UnknownEvent):
            log.info("unknown event type %r skipped", event_type)
            await self._advance(event_type, event_id)
            return
        handler = self._handlers.get(event_type)
        if handler is not None:
            self.current_event_id = event_id
            await self._dispatch(handler, event, event_type)
        await self._advance(event_type, event_id)

    async def _dispatch(self, handler: Handler, event: KnownEvent, event_type: str) -> None:
        try:
            await handler(event)
        except (UpstreamError, SyncError, aiohttp.ClientError, TimeoutError, OSError):
            raise  # the connection is in trouble: reconnect, the event is replayed
        except Exception:
            # A bug or bad data in one event must not wedge the stream (protocol §4.2).
            self._metrics.event_errors.labels(event_type).inc()
            log.exception("handling %s failed; skipped", event_type)

    async def _advance(self, event_type: str, event_id: str) -> None:
        """Persist the id of a handled sequenced event. ``ping`` and ``resync_required`` carry
        no id (§4.1): the parser's last-id buffer then still holds an older id, which must not
        overwrite the cursor a resync has just set."""
        if event_type in UNSEQUENCED or not event_id.isdigit() or event_id == self._saved_id:
            return
        await self._db.set_state(STATE_LAST_EVENT_ID, event_id)
        self._saved_id = event_id

    async def reset_event_cursor(self, seq: int | None) -> None:
        """After a full sync for ``resync_required``: continue from that sync's seq (§4.3)."""
        await self._db.set_state(STATE_LAST_EVENT_ID, None if seq is None else str(seq))
        self._saved_id = None if seq is None else str(seq)

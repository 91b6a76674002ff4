"""Fan-out of committed events to the SSE streams of this process.

One task reads :meth:`Store.watch_events` (the events this process commits, or with MongoDB
every instance's), encodes each event's SSE frame once, and hands the same bytes to every
subscription of its entity. A subscription is a bounded list of frames and one waiter: a
subscriber that falls ``queue_size`` frames behind is dropped (its stream ends) and catches up by
reconnecting with ``Last-Event-ID``, so memory never grows without bound because of a slow gateway.

Per-stream cost is kept to that list and the stream's own task (measured in
bench/sse_fanout.py: every task, timer and queue per stream costs memory and event-loop time at
thousands of streams). Everything periodic is hub-wide instead:

- one keepalive task builds the ``ping`` frame once per interval and queues it on every stream;
- one sweep ends subscriptions whose token has expired and cancels streams whose ``send`` has
  been blocked for ``send_timeout`` seconds (a gateway that stopped reading);
- :meth:`EventHub.begin_shutdown` ends every stream at once when the server starts shutting down
  (called by :class:`navign_server.app.Server` as uvicorn begins its shutdown: uvicorn waits for
  open responses to finish before it runs the lifespan shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from navign_proto.wire import format_rfc3339
from navign_server.storage.base import Store, StoredEvent

log = logging.getLogger(__name__)

#: Frames a subscriber may fall behind before it is dropped.
QUEUE_SIZE = 1000
#: Pause before re-reading the store's event feed after it failed.
WATCH_RETRY_SECONDS = 1.0
#: How often the sweep looks for expired tokens and stalled sends.
SWEEP_SECONDS = 5.0
#: The keepalive interval (protocol §4.1; a server setting).
PING_SECONDS = 15.0
#: A stream whose ``send`` has been blocked this long is cancelled.
SEND_TIMEOUT_SECONDS = 30.0


def encode_frame(event: StoredEvent) -> bytes:
    """The event as one SSE frame (``id``, ``event``, single-line JSON ``data``)."""
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.seq}\r\nevent: {event.type}\r\ndata: {data}\r\n\r\n".encode()


def encode_unsequenced(event_type: str, data: object) -> bytes:
    """A frame without ``id:`` (``ping``, ``resync_required``: not part of the sequence)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event_type}\r\ndata: {payload}\r\n\r\n".encode()


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One frame for the streams; ``seq`` is None for frames outside the sequence (pings)."""

    seq: int | None
    type: str
    frame: bytes


class SubscriptionClosedError(Exception):
    """The subscription ended: the subscriber fell behind, its token expired, its gateway was
    disabled, or the server is shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    __slots__ = (
        "_closed_reason",
        "_hub",
        "_items",
        "_limit",
        "_waiter",
        "deadline",
        "entity_id",
        "orchestrator_id",
        "send_started",
        "stalled",
        "task",
    )

    def __init__(
        self,
        hub: EventHub,
        entity_id: str,
        orchestrator_id: str | None,
        limit: int,
        deadline: datetime | None,
    ) -> None:
        self.entity_id = entity_id
        self.orchestrator_id = orchestrator_id
        self.deadline = deadline
        #: The reading task (cancelled by the sweep when its send stalls).
        self.task: asyncio.Task[object] | None = asyncio.current_task()
        #: loop.time() when the stream's current send began; 0.0 while it is not sending.
        self.send_started = 0.0
        #: Set by the sweep before it cancels :attr:`task`.
        self.stalled = False
        self._hub = hub
        self._limit = limit
        self._items: list[LiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed_reason: str | None = None

    def _offer(self, event: LiveEvent) -> None:
        if self._closed_reason is not None:
            return
        if len(self._items) >= self._limit:
            self._close("subscriber fell behind")
            return
        self._items.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._items = []  # release what is buffered; the reconnect replays it
        self._wake()

    def end(self, reason: str) -> None:
        """End the subscription: the reader's next :meth:`take` raises SubscriptionClosedError."""
        self._close(reason)

    async def take(self) -> list[LiveEvent]:
        """Every frame queued so far (at least one), oldest first; waits while there is none.
        SubscriptionClosedError once the subscription has ended."""
        while not self._items:
            if self._closed_reason is not None:
                raise SubscriptionClosedError(self._closed_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._closed_reason is not None:
            raise SubscriptionClosedError(self._closed_reason)
        items, self._items = self._items, []
        return items

    @property
    def pending(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._hub._remove(self)


class EventHub:
    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], datetime] | None = None,
        ping_seconds: float = PING_SECONDS,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> None:
        self._store = store
        self._queue_size = queue_size
        self._clock = clock
        self._ping_seconds = ping_seconds
        self._send_timeout = send_timeout
        self._sweep_seconds = sweep_seconds
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._run(), name="event-hub"),
            asyncio.create_task(self._sweep(), name="event-hub-sweep"),
            asyncio.create_task(self._keepalive(), name="event-hub-keepalive"),
        ]
        await self._ready.wait()

    async def _run(self) -> None:
        while not self._closing:
            feed = self._store.watch_events()
            try:
                self._ready.set()
                async for event in feed:
                    group = self._subscribers.get(event.entity_id)
                    if not group:
                        continue
                    live = LiveEvent(event.seq, event.type, encode_frame(event))
                    for subscription in list(group):
                        subscription._offer(live)
            except asyncio.CancelledError:
                raise
            except Exception:  # the feed must survive any store hiccup
                log.warning(
                    "event feed failed; subscribers will resume by Last-Event-ID", exc_info=True
                )
                self._drop_all("event feed restarted")
                await asyncio.sleep(WATCH_RETRY_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await feed.aclose()  # type: ignore[attr-defined]

    def ping_frame(self) -> LiveEvent:
        data = {} if self._clock is None else {"server_time": format_rfc3339(self._clock())}
        return LiveEvent(None, "ping", encode_unsequenced("ping", data))

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self._ping_seconds)
            ping = self.ping_frame()
            for subscription in self._all():
                subscription._offer(ping)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._sweep_seconds)
            self.sweep(loop.time())

    def sweep(self, monotonic_now: float) -> None:
        """End subscriptions past their token's expiry; cancel streams stalled in ``send``."""
        now = self._clock() if self._clock is not None else None
        for subscription in self._all():
            deadline = subscription.deadline
            if now is not None and deadline is not None and deadline <= now:
                subscription.end("token expired")
            started = subscription.send_started
            if (
                started
                and monotonic_now - started > self._send_timeout
                and not subscription.stalled
            ):
                subscription.stalled = True
                subscription.end("gateway stopped reading")
                if subscription.task is not None:
                    subscription.task.cancel()

    def _all(self) -> list[Subscription]:
        return [s for group in self._subscribers.values() for s in group]

    def subscribe(
        self,
        entity_id: str,
        orchestrator_id: str | None = None,
        deadline: datetime | None = None,
    ) -> Subscription:
        """A subscription read by the current task (the one the sweep cancels on a stall)."""
        if self._closing:
            raise SubscriptionClosedError("server shutting down")
        subscription = Subscription(self, entity_id, orchestrator_id, self._queue_size, deadline)
        self._subscribers[entity_id].add(subscription)
        return subscription

    def end_orchestrator(self, entity_id: str, orchestrator_id: str, reason: str) -> int:
        """End the streams of one gateway (it was disabled); returns how many."""
        ended = 0
        for subscription in list(self._subscribers.get(entity_id, ())):
            if subscription.orchestrator_id == orchestrator_id:
                subscription.end(reason)
                ended += 1
        return ended

    def _remove(self, subscription: Subscription) -> None:
        group = self._subscribers.get(subscription.entity_id)
        if group is not None:
            group.discard(subscription)
            if not group:
                del self._subscribers[subscription.entity_id]

    def _drop_all(self, reason: str) -> None:
        for subscription in self._all():
            subscription._close(reason)

    def begin_shutdown(self) -> None:
        """The server is shutting down: refuse new streams and end the open ones.

        Safe to call from a signal handler or another thread.
        """
        self._closing = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._drop_all, "server shutting down")

    async def close(self) -> None:
        """End every subscription (open streams finish promptly) and stop the hub's tasks."""
        self._closing = True
        self._drop_all("server shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

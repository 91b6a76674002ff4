"""Fan-out of committed events to the SSE streams of this process.

One task reads :meth:`Store.watch_events` (the events this process commits, or with MongoDB
every instance's), encodes each event's SSE frame once, and hands it to the subscriptions of its
entity. Each subscription has a bounded queue: a subscriber that falls ``queue_size`` events
behind is dropped (its stream ends) and catches up by reconnecting with ``Last-Event-ID``, so
memory never grows without bound because of a slow gateway.

Per-stream work is kept to one queue: token expiry is enforced by one hub-wide sweep, and one
shared signal ends every stream at shutdown (measured in bench/sse_fanout.py: tasks and timers
per stream cost memory and event-loop time at thousands of streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import anyio

from navign_server.storage.base import Store, StoredEvent

log = logging.getLogger(__name__)

#: Events a subscriber may fall behind before it is dropped.
QUEUE_SIZE = 1000
#: Pause before re-reading the store's event feed after it failed.
WATCH_RETRY_SECONDS = 1.0
#: How often subscriptions past their deadline (their token's expiry) are ended.
SWEEP_SECONDS = 5.0


def encode_frame(event: StoredEvent) -> bytes:
    """The event as one SSE frame (``id``, ``event``, single-line JSON ``data``)."""
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.seq}\r\nevent: {event.type}\r\ndata: {data}\r\n\r\n".encode()


@dataclass(frozen=True, slots=True)
class LiveEvent:
    seq: int
    type: str
    frame: bytes


class SubscriptionClosedError(Exception):
    """The subscription ended: the subscriber fell behind, its token expired, or the server is
    shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    def __init__(
        self, hub: EventHub, entity_id: str, queue_size: int, deadline: datetime | None
    ) -> None:
        self.entity_id = entity_id
        self.deadline = deadline
        self._hub = hub
        self._queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(queue_size)
        self._closed_reason: str | None = None

    def _offer(self, event: LiveEvent) -> None:
        if self._closed_reason is not None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._close("subscriber fell behind")

    def _close(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        # Release what is buffered, then wake the reader.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def end(self, reason: str) -> None:
        """End the subscription: the reader's next call raises SubscriptionClosedError."""
        self._close(reason)

    async def next(self, wait: float | None = None) -> LiveEvent | None:
        """The next event; with ``wait``, None after that many seconds without one.
        SubscriptionClosedError when the subscription has ended."""
        if self._closed_reason is not None and self._queue.empty():
            raise SubscriptionClosedError(self._closed_reason)
        if wait is None:
            event = await self._queue.get()
        else:
            try:
                event = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                return None
        if event is None:
            raise SubscriptionClosedError(self._closed_reason or "closed")
        return event

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._hub._remove(self)


class EventHub:
    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._queue_size = queue_size
        self._clock = clock
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._closing = False
        #: Set (by sse-starlette, for every stream) when the server starts shutting down.
        self.shutdown_signal = anyio.Event()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="event-hub"),
            asyncio.create_task(self._sweep(), name="event-hub-sweep"),
            asyncio.create_task(self._end_on_shutdown(), name="event-hub-shutdown"),
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

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            if self._clock is None:
                continue
            now = self._clock()
            for group in list(self._subscribers.values()):
                for subscription in list(group):
                    if subscription.deadline is not None and subscription.deadline <= now:
                        subscription.end("token expired")

    async def _end_on_shutdown(self) -> None:
        await self.shutdown_signal.wait()
        self._drop_all("server shutting down")

    def subscribe(self, entity_id: str, deadline: datetime | None = None) -> Subscription:
        if self._closing:
            raise SubscriptionClosedError("server shutting down")
        subscription = Subscription(self, entity_id, self._queue_size, deadline)
        self._subscribers[entity_id].add(subscription)
        return subscription

    @contextlib.asynccontextmanager
    async def subscription(
        self, entity_id: str, deadline: datetime | None = None
    ) -> AsyncIterator[Subscription]:
        subscription = self.subscribe(entity_id, deadline)
        try:
            yield subscription
        finally:
            subscription.close()

    def _remove(self, subscription: Subscription) -> None:
        group = self._subscribers.get(subscription.entity_id)
        if group is not None:
            group.discard(subscription)
            if not group:
                del self._subscribers[subscription.entity_id]

    def _drop_all(self, reason: str) -> None:
        for group in list(self._subscribers.values()):
            for subscription in list(group):
                subscription._close(reason)

    async def close(self) -> None:
        """End every subscription (open streams finish promptly) and stop the hub's tasks."""
        self._closing = True
        self._drop_all("server shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

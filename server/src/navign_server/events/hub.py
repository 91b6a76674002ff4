"""Fan-out of committed events to the SSE streams of this process.

One task reads :meth:`Store.watch_events` (the events this process commits, or with MongoDB
every instance's) and hands each event to the subscriptions of its entity. Each subscription
has a bounded queue: a subscriber that falls ``queue_size`` events behind is dropped (its stream
ends) and catches up by reconnecting with ``Last-Event-ID``, so memory never grows without
bound because of a slow gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from navign_server.storage.base import Store, StoredEvent

log = logging.getLogger(__name__)

#: Events a subscriber may fall behind before it is dropped.
QUEUE_SIZE = 1000
#: Pause before re-reading the store's event feed after it failed.
WATCH_RETRY_SECONDS = 1.0


class SubscriptionClosedError(Exception):
    """The subscription ended: the subscriber fell behind, or the server is shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    def __init__(self, hub: EventHub, entity_id: str, queue_size: int) -> None:
        self.entity_id = entity_id
        self._hub = hub
        self._queue: asyncio.Queue[StoredEvent | None] = asyncio.Queue(queue_size)
        self._closed_reason: str | None = None

    def _offer(self, event: StoredEvent) -> None:
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
        # Make room for the wake-up marker, then wake the reader.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self, wait: float | None = None) -> StoredEvent | None:
        """The next event; None after ``wait`` seconds without one; SubscriptionClosedError
        when closed."""
        if self._closed_reason is not None and self._queue.empty():
            raise SubscriptionClosedError(self._closed_reason)
        try:
            event = await asyncio.wait_for(self._queue.get(), wait)
        except TimeoutError:
            return None
        if event is None:
            raise SubscriptionClosedError(self._closed_reason or "closed")
        return event

    def end(self, reason: str) -> None:
        """End the subscription: the reader's next call raises SubscriptionClosedError."""
        self._close(reason)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._hub._remove(self)


class EventHub:
    def __init__(self, store: Store, *, queue_size: int = QUEUE_SIZE) -> None:
        self._store = store
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")
        await self._ready.wait()

    async def _run(self) -> None:
        while not self._closing:
            feed = self._store.watch_events()
            try:
                self._ready.set()
                async for event in feed:
                    for subscription in list(self._subscribers.get(event.entity_id, ())):
                        subscription._offer(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "event feed failed; subscribers will resume by Last-Event-ID", exc_info=True
                )
                self._drop_all("event feed restarted")
                await asyncio.sleep(WATCH_RETRY_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await feed.aclose()  # type: ignore[attr-defined]

    def subscribe(self, entity_id: str) -> Subscription:
        if self._closing:
            raise SubscriptionClosedError("server shutting down")
        subscription = Subscription(self, entity_id, self._queue_size)
        self._subscribers[entity_id].add(subscription)
        return subscription

    @contextlib.asynccontextmanager
    async def subscription(self, entity_id: str) -> AsyncIterator[Subscription]:
        subscription = self.subscribe(entity_id)
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
        """End every subscription (open streams finish promptly) and stop the feed."""
        self._closing = True
        self._drop_all("server shutting down")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

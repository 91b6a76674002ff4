"""Events from every server instance: one change stream per store on the ``events`` collection,
fanned out to the watches of this process.

The change stream is opened by ``MongoStore.open()`` and stays open, so a watch subscribes at
the moment ``watch_events()`` is called, with no I/O: from then on it is handed every insert the
stream reports. The stream may still be delivering events committed shortly *before* that
moment; each watch therefore drops events whose cluster time is at or before the latest
operation time the store had seen when the watch was made (its own commits included), so an
event this process committed before subscribing never arrives. An event another instance
committed just before the call may still arrive: consumers handle events by seq and drop what
they already have.

The stream resumes by itself after network errors and failovers (resume token), without losing
or repeating events. If it cannot resume (the oplog no longer holds its position), events may
have been missed: every watch ends with :class:`EventFeedError` (the consumer resumes from its
last seq with ``events_since``), watches made until a new stream is open end at once, and the
new stream starts from the present.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Mapping
from typing import Any, Final, Self

from bson.timestamp import Timestamp
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, PyMongoError

from navign_server.storage.base import StorageError, StoredEvent, WatchOverflowError
from navign_server.storage.sqlite_schema import canonical_text, from_us, load_json, to_us

log = logging.getLogger(__name__)

Doc = dict[str, Any]

#: Events one watcher may fall behind before its iterator ends with WatchOverflowError.
WATCH_QUEUE_SIZE: Final = 10_000
#: Pauses between attempts to reopen the change stream: doubling, capped, jittered.
REOPEN_INITIAL_SECONDS: Final = 0.5
REOPEN_MAX_SECONDS: Final = 30.0
_PIPELINE: Final = ({"$match": {"operationType": "insert"}},)


class EventFeedError(StorageError):
    """The change stream lost its position, so events may have been missed; resume from the
    last seq handled (``events_since``) and watch again."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"event feed interrupted: {reason}")
        self.reason = reason


def event_document(event: StoredEvent) -> Doc:
    """How an event is stored in the ``events`` collection."""
    micros = to_us(event.created_at)
    return {
        "entity_id": event.entity_id,
        "seq": event.seq,
        "type": event.type,
        "data": canonical_text(event.data),
        "created_us": micros,
        "created": from_us(micros),
    }


def stored_event(doc: Mapping[str, Any]) -> StoredEvent:
    return StoredEvent(
        doc["entity_id"],
        doc["seq"],
        doc["type"],
        load_json(doc["data"]),
        from_us(doc["created_us"]),
    )


class _End(enum.Enum):
    OVERFLOW = "overflow"
    CLOSED = "closed"
    FAILED = "failed"


class EventWatch:
    """Events committed after this object was created (see ``Store.watch_events``).

    Bounded: a consumer that falls ``maxsize`` events behind loses the buffer and gets
    :class:`WatchOverflowError`. ``aclose()`` unsubscribes; ``store.close()`` ends the iteration
    normally; a change stream that lost its position ends it with :class:`EventFeedError`.
    """

    def __init__(self, feed: EventFeed, maxsize: int, since: Timestamp | None) -> None:
        self._feed = feed
        self._since = since
        self._queue: asyncio.Queue[StoredEvent | _End] = asyncio.Queue(maxsize)
        self._ended = False  # the consumer has seen the end
        self._stopped = False  # no more events will be offered
        self._failure = ""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StoredEvent:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, StoredEvent):
            return item
        self._ended = True
        if item is _End.OVERFLOW:
            raise WatchOverflowError(self._queue.maxsize)
        if item is _End.FAILED:
            raise EventFeedError(self._failure)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._end(_End.CLOSED)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def offer(self, event: StoredEvent, cluster_time: Timestamp) -> None:
        if self._stopped or (self._since is not None and cluster_time <= self._since):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._end(_End.OVERFLOW)

    def fail(self, reason: str) -> None:
        self._failure = reason
        self._end(_End.FAILED)

    def _end(self, reason: _End) -> None:
        """Unsubscribe, drop the buffer and wake the consumer; the first reason wins."""
        if self._stopped:
            return
        self._stopped = True
        self._feed.discard(self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(reason)


class EventFeed:
    """The store's change stream on ``events`` and the watches it feeds."""

    def __init__(self, events: AsyncCollection[Doc], maxsize: int = WATCH_QUEUE_SIZE) -> None:
        self._events = events
        self._maxsize = maxsize
        self._watches: set[EventWatch] = set()
        self._task: asyncio.Task[None] | None = None
        #: Why new watches end at once: the stream lost its position and is not open again yet.
        self._broken: str | None = None

    def __len__(self) -> int:
        return len(self._watches)

    async def start(self) -> None:
        """Open the change stream (it reports what is committed from now on) and read it in a
        background task."""
        stream = await self._events.watch(list(_PIPELINE))
        self._task = asyncio.create_task(self._run(stream), name="navign-mongo-event-feed")

    def watch(self, since: Timestamp | None) -> EventWatch:
        """A watch of events with a cluster time after ``since``."""
        watch = EventWatch(self, self._maxsize, since)
        if self._broken is not None:
            watch.fail(self._broken)
        else:
            self._watches.add(watch)
        return watch

    def discard(self, watch: EventWatch) -> None:
        self._watches.discard(watch)

    def publish(self, change: Mapping[str, Any]) -> None:
        """Hand one change-stream insert to every watch."""
        try:
            event = stored_event(change["fullDocument"])
            cluster_time = change["clusterTime"]
        except (KeyError, TypeError, ValueError):
            log.warning("skipping a malformed event from the change stream", exc_info=True)
            return
        for watch in list(self._watches):
            watch.offer(event, cluster_time)

    def fail_all(self, reason: str) -> None:
        self._broken = reason
        for watch in list(self._watches):
            watch.fail(reason)

    async def close(self) -> None:
        for watch in list(self._watches):
            watch._end(_End.CLOSED)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, stream: AsyncChangeStream[Doc]) -> None:
        try:
            while True:
                token: Mapping[str, Any] | None
                try:
                    async for change in stream:
                        self.publish(change)
                    # The stream ended by itself (invalidated: the collection was dropped or
                    # renamed). Its position cannot be resumed.
                    token, reason = None, "the change stream was invalidated"
                except PyMongoError as exc:
                    token, reason = stream.resume_token, str(exc)
                finally:
                    with contextlib.suppress(PyMongoError):
                        await stream.close()
                log.warning("event change stream interrupted (%s); reopening it", reason)
                if token is None:
                    self.fail_all(reason)
                stream = await self._reopen(token)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("event feed stopped")
            self.fail_all("the event feed stopped")
            raise

    async def _reopen(self, token: Mapping[str, Any] | None) -> AsyncChangeStream[Doc]:
        """A change stream from ``token`` (nothing lost), or from now when there is none or the
        server no longer knows it (then every watch has been failed first)."""
        delay = REOPEN_INITIAL_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                if token is not None:
                    return await self._events.watch(list(_PIPELINE), resume_after=token)
                stream = await self._events.watch(list(_PIPELINE))
                self._broken = None
                log.info("event change stream reopened from the present")
                return stream
            except PyMongoError as exc:
                resumable = isinstance(exc, ConnectionFailure) or exc.has_error_label(
                    "ResumableChangeStreamError"
                )
                if token is not None and not resumable:
                    log.warning("cannot resume the event change stream (%s)", exc)
                    self.fail_all(f"cannot resume the change stream: {exc}")
                    token = None
                    continue
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                log.log(level, "cannot reopen the event change stream yet: %s", exc)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter
            delay = min(delay * 2, REOPEN_MAX_SECONDS)

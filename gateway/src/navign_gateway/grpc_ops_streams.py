"""What each open ``navign.gateway.v1`` ``Watch*`` stream holds between a change and the
client reading it, and how they all end when the gateway stops.

A stream's changes arrive from listeners that the inventory and the rollout engine call
synchronously; they go into a :class:`ChangeQueue`:

- :meth:`~ChangeQueue.put` queues a message at once. At most ``limit`` may wait: one more and
  the client is too far behind, :meth:`~ChangeQueue.get` raises :class:`StreamOverflowError`
  (the servicer ends the call with RESOURCE_EXHAUSTED; the client calls again and gets a new
  snapshot);
- :meth:`~ChangeQueue.defer` holds a message back until a time (coalescing: a later
  :meth:`defer` under the same key replaces it, :meth:`~ChangeQueue.cancel` drops it); its
  message is made when it is due, so it carries the latest state;
- :meth:`~ChangeQueue.finish` ends the stream with OK after the messages already queued;
  :meth:`~ChangeQueue.close` ends it at once (the gateway stops).

Times are the event loop's clock (monotonic).

What goes into the queue is decided per stream by a view of what its client was told:
:class:`BeaconWatch` (WatchBeacons: ADDED / UPDATED / REMOVED against the filter, RSSI and
last-seen alone at most once per beacon per :data:`BEACON_COALESCE_SECONDS`) and
:class:`RolloutWatch` (WatchRollout: summary and changed entries, ``bytes_transferred`` alone at
most once per :data:`ROLLOUT_PROGRESS_SECONDS`, the stream finished after a terminal state).

Public: :class:`ChangeQueue`, :class:`WatchStreams`, :class:`StreamOverflowError`,
:class:`BeaconWatch`, :class:`RolloutWatch`, :func:`beacon_change` and the constants.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

from navign_gateway.beacons import BeaconRecord
from navign_gateway.grpc_ops_messages import beacon_message, rollout_beacon_message
from navign_gateway.rollout import Entry, EntryState, Rollout
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb

#: Messages one stream may have waiting before its client counts as too far behind.
STREAM_QUEUE_MAX: Final = 1024
#: An update changing only a beacon's RSSI or last-seen is sent at most this often per beacon.
BEACON_COALESCE_SECONDS = 1.0
#: Progress that changes only bytes_transferred is sent at most this often per stream.
ROLLOUT_PROGRESS_SECONDS = 1.0
_PROGRESS: Final = "progress"

M = TypeVar("M")


class StreamOverflowError(Exception):
    """The client read too slowly; its stream ends with RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} changes waiting for this client; call again")
        self.limit = limit


class ChangeQueue(Generic[M]):
    """One stream's pending messages (see the module's docstring)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = STREAM_QUEUE_MAX if limit is None else limit
        self._ready: deque[M] = deque()
        self._deferred: dict[object, tuple[float, Callable[[], M | None]]] = {}
        self._wake = asyncio.Event()
        self._overflowed = False
        self._finishing = False
        self._closed = False

    @property
    def ended(self) -> bool:
        """No more messages are taken (overflowed, finishing or closed)."""
        return self._overflowed or self._finishing or self._closed

    def put(self, message: M) -> None:
        if self.ended:
            return
        if len(self._ready) >= self.limit:
            self._overflowed = True
            self._ready.clear()
            self._deferred.clear()
        else:
            self._ready.append(message)
        self._wake.set()

    def defer(self, key: object, due: float, make: Callable[[], M | None]) -> None:
        """Queue ``make()`` at ``due`` (None from it: nothing to send), replacing what was
        deferred under ``key``; an earlier due time of the one replaced is kept."""
        if self.ended:
            return
        held = self._deferred.get(key)
        self._deferred[key] = (min(due, held[0]) if held else due, make)
        self._wake.set()

    def deferred(self, key: object) -> bool:
        return key in self._deferred

    def cancel(self, key: object) -> None:
        self._deferred.pop(key, None)

    def finish(self) -> None:
        """End after the messages queued so far (deferred ones are dropped)."""
        self._deferred.clear()
        self._finishing = True
        self._wake.set()

    def close(self) -> None:
        """End now (the gateway stops)."""
        self._closed = True
        self._ready.clear()
        self._deferred.clear()
        self._wake.set()

    async def get(self, within: float | None = None) -> M | None:
        """The next message; None when the stream ended (finished or closed) or, given
        ``within`` (seconds), when nothing came in that time. Raises
        :class:`StreamOverflowError` once the client fell behind."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while True:  # each pass returns, raises, or waits for a change or a due time
            now = loop.time()
            self._release(now)
            if self._overflowed:
                raise StreamOverflowError(self.limit)
            if self._closed:
                return None
            if self._ready:
                return self._ready.popleft()
            if self._finishing:
                return None
            waits = [due - now for due, _ in self._deferred.values()]
            if deadline is not None:
                if now >= deadline:
                    return None
                waits.append(deadline - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(waits) if waits else None)

    def _release(self, now: float) -> None:
        """Move the deferred messages that are due into the queue, earliest first."""
        due = sorted(
            ((at, key) for key, (at, _) in self._deferred.items() if at <= now),
            key=lambda item: item[0],
        )
        for _, key in due:
            _, make = self._deferred.pop(key)
            message = make()
            if message is not None:
                self.put(message)


class WatchStreams:
    """The open ``Watch*`` streams of ``navign.gateway.v1``; :meth:`end_streams` ends them
    all with OK (before the gRPC server stops), and any opened later at once."""

    def __init__(self) -> None:
        self._queues: set[ChangeQueue[Any]] = set()
        self._ended = False

    def __len__(self) -> int:
        return len(self._queues)

    @contextlib.contextmanager
    def track(self, queue: ChangeQueue[M]) -> Iterator[ChangeQueue[M]]:
        """Count ``queue`` as an open stream while the block runs."""
        if self._ended:
            queue.close()
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def end_streams(self) -> None:
        self._ended = True
        for queue in list(self._queues):
            queue.close()


# -- what each stream tells its client ------------------------------------------------------


def beacon_change(change: pb.BeaconChange, beacon: pb.Beacon) -> pb.WatchBeaconsResponse:
    return pb.WatchBeaconsResponse(change=change, beacon=beacon)


class BeaconWatch:
    """One WatchBeacons stream's view: the beacons its client was told of, as told."""

    def __init__(
        self,
        queue: ChangeQueue[pb.WatchBeaconsResponse],
        matches: Callable[[pb.Beacon], bool],
        clock: Callable[[], float],
    ) -> None:
        self._queue = queue
        self._matches = matches
        self._clock = clock
        self._shown: dict[str, pb.Beacon] = {}
        self._latest: dict[str, pb.Beacon] = {}
        self._sent_at: dict[str, float] = {}

    def snapshot(self, records: list[BeaconRecord]) -> list[pb.WatchBeaconsResponse]:
        now = self._clock()
        messages = []
        for record in records:
            beacon = beacon_message(record, now)
            if self._matches(beacon):
                self._shown[record.beacon_id] = beacon
                messages.append(beacon_change(pb.BEACON_CHANGE_ADDED, beacon))
        return [*messages, pb.WatchBeaconsResponse(change=pb.BEACON_CHANGE_SNAPSHOT_END)]

    def consider(self, record: BeaconRecord, _before: BeaconRecord | None = None) -> None:
        """An inventory listener: what this client must hear of ``record``'s new state."""
        beacon = beacon_message(record, self._clock())
        beacon_id = record.beacon_id
        shown = self._shown.get(beacon_id)
        if not self._matches(beacon):
            if shown is not None:
                del self._shown[beacon_id]
                self._queue.cancel(beacon_id)
                removed = pb.Beacon(beacon_id=beacon_id)
                self._queue.put(beacon_change(pb.BEACON_CHANGE_REMOVED, removed))
            return
        if beacon == shown:
            self._queue.cancel(beacon_id)
            return
        now = asyncio.get_running_loop().time()
        if shown is not None and _same_but(shown, beacon, "rssi_dbm", "last_seen"):
            due = self._sent_at.get(beacon_id, -math.inf) + BEACON_COALESCE_SECONDS
            if due > now or self._queue.deferred(beacon_id):
                self._latest[beacon_id] = beacon
                self._queue.defer(beacon_id, due, lambda: self._flush(beacon_id))
                return
        self._queue.cancel(beacon_id)
        self._queue.put(
            self._told(beacon, pb.BEACON_CHANGE_UPDATED if shown else pb.BEACON_CHANGE_ADDED)
        )

    def _told(self, beacon: pb.Beacon, change: pb.BeaconChange) -> pb.WatchBeaconsResponse:
        """The message telling ``beacon``, counted as told."""
        self._shown[beacon.beacon_id] = beacon
        self._sent_at[beacon.beacon_id] = asyncio.get_running_loop().time()
        return beacon_change(change, beacon)

    def _flush(self, beacon_id: str) -> pb.WatchBeaconsResponse | None:
        beacon = self._latest.pop(beacon_id, None)
        if beacon is None or beacon_id not in self._shown:
            return None
        return self._told(beacon, pb.BEACON_CHANGE_UPDATED)


M2 = TypeVar("M2", pb.Beacon, pb.RolloutBeacon)


def _same_but(before: M2, after: M2, *fields: str) -> bool:
    """Whether the two messages differ only in ``fields``."""
    a, b = type(before)(), type(after)()
    a.CopyFrom(before)
    b.CopyFrom(after)
    for name in fields:
        a.ClearField(name)
        b.ClearField(name)
    return a == b


class RolloutWatch:
    """One WatchRollout stream's view: the entries and summary its client was told of. The
    summaries it queues have no release; the stream fills it in before sending."""

    def __init__(
        self,
        rollout: Rollout,
        queue: ChangeQueue[pb.WatchRolloutResponse],
        summary: Callable[[Rollout, dict[str, EntryState]], pb.Rollout],
    ) -> None:
        self.latest = rollout
        self._queue = queue
        self._summary_of = summary
        self._entries = {b: rollout_beacon_message(e) for b, e in rollout.entries.items()}
        self._states = {b: e.state for b, e in rollout.entries.items()}
        self._summary = summary(rollout, self._states)
        self._pending: dict[str, pb.RolloutBeacon] = {}
        self._sent_at = -math.inf

    def on_change(self, rollout: Rollout, changed: list[Entry]) -> None:
        """A rollout engine listener (``rollout`` comes without entries)."""
        if rollout.rollout_id != self.latest.rollout_id or self._queue.ended:
            return
        self.latest = rollout
        significant: dict[str, pb.RolloutBeacon] = {}
        for entry in changed:
            message = rollout_beacon_message(entry)
            known = self._entries.get(entry.beacon_id)
            self._entries[entry.beacon_id] = message
            self._states[entry.beacon_id] = entry.state
            if message == known:
                continue
            if known is not None and _same_but(known, message, "bytes_transferred"):
                self._pending[entry.beacon_id] = message
            else:
                self._pending.pop(entry.beacon_id, None)
                significant[entry.beacon_id] = message
        summary = self._summary_of(rollout, self._states)
        if significant or summary != self._summary:
            self._summary = summary
            self._queue.cancel(_PROGRESS)
            self._queue.put(self._message(list(significant.values())))
            if rollout.terminal:
                self._queue.finish()
        elif self._pending:
            now = asyncio.get_running_loop().time()
            due = self._sent_at + ROLLOUT_PROGRESS_SECONDS
            if due <= now and not self._queue.deferred(_PROGRESS):
                self._queue.put(self._message([]))
            else:
                self._queue.defer(_PROGRESS, due, self._progress)

    def _progress(self) -> pb.WatchRolloutResponse | None:
        return self._message([]) if self._pending else None

    def _message(self, significant: list[pb.RolloutBeacon]) -> pb.WatchRolloutResponse:
        """The summary with the ``significant`` entries and the progress not sent yet."""
        changed = {**{b.beacon_id: b for b in significant}, **self._pending}
        self._pending.clear()
        self._sent_at = asyncio.get_running_loop().time()
        return pb.WatchRolloutResponse(
            rollout=self._summary, changed_beacons=[changed[b] for b in sorted(changed)]
        )

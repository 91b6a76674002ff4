"""Assignment streams: what each tower streaming ``GetTaskAssignment`` receives.

A stream starts with the entity's outstanding assignments (a snapshot taken under the engine's
lock) and then gets each new one through a bounded queue. A tower that reads too slowly is
disconnected (:class:`AssignmentStreamOverflowError`) rather than letting the gateway's memory
grow; it reconnects and gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from navign_gateway.tasks.model import (
    AssignmentStreamClosedError,
    AssignmentStreamOverflowError,
    TaskRecord,
)
from navign_proto.grpc import task_pb2


class AssignmentStream:
    """One tower's ``GetTaskAssignment`` stream: the entity's outstanding assignments first,
    then live ones through a queue of at most ``limit`` (the snapshot does not count)."""

    def __init__(
        self, entity_id: str, outstanding: Iterable[task_pb2.TaskAssignment], limit: int
    ) -> None:
        self.entity_id = entity_id
        self.limit = limit
        self._snapshot = deque(outstanding)
        self._live: deque[task_pb2.TaskAssignment] = deque()
        self._wake = asyncio.Event()
        self._overflowed = False
        self._closed = False

    def offer(self, assignment: task_pb2.TaskAssignment) -> None:
        if self._closed or self._overflowed:
            return
        if len(self._live) >= self.limit:
            self._overflowed = True
            self._live.clear()
        else:
            self._live.append(assignment)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def next(self) -> task_pb2.TaskAssignment:
        """The next assignment; raises :class:`AssignmentStreamOverflowError` once the tower
        fell behind, :class:`AssignmentStreamClosedError` once the engine closed it."""
        while True:  # each pass returns, raises, or waits for offer()/close()
            if self._overflowed:
                raise AssignmentStreamOverflowError(self.entity_id, self.limit)
            if self._closed:
                raise AssignmentStreamClosedError(self.entity_id)
            if self._snapshot:
                return self._snapshot.popleft()
            if self._live:
                return self._live.popleft()
            self._wake.clear()
            await self._wake.wait()


def assignment_of(record: TaskRecord) -> task_pb2.TaskAssignment:
    """The assignment a tower receives for an assigned task."""
    return task_pb2.TaskAssignment(robot_id=record.robot_id or "", task=record.task)

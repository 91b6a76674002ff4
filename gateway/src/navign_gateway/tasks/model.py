"""What the task engine speaks of: task states and changes, the records it reads back, the
reporter it delivers to, and its errors.

Frozen dataclasses and enums only, so that the streams, the store and the engine share them
without importing one another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

import aiosqlite

from navign_gateway.robots import Point
from navign_proto.grpc import task_pb2
from navign_proto.wire import TaskStatus, TaskStatusReport


class TaskState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    FAILED = "failed"


class TaskChange(StrEnum):
    """What happened to a task; each one is recorded and reported."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    FAILED = "failed"
    REQUEUED = "requeued"


#: How each change is reported. QUEUED and REQUEUED carry no ``robot_id``.
WIRE_STATUS: Final[Mapping[TaskChange, TaskStatus]] = {
    TaskChange.QUEUED: TaskStatus.ASSIGNED,
    TaskChange.ASSIGNED: TaskStatus.ASSIGNED,
    TaskChange.ACCEPTED: TaskStatus.IN_PROGRESS,
    TaskChange.COMPLETED: TaskStatus.COMPLETED,
    TaskChange.FAILED: TaskStatus.FAILED,
    TaskChange.REQUEUED: TaskStatus.ASSIGNED,
}


class TaskReporter(Protocol):
    async def report_task(self, report: TaskStatusReport) -> None:
        """Deliver one report; raise when it was not delivered (it stays in the outbox)."""
        ...


class TaskError(Exception):
    """Base of the task engine's errors."""


class AssignmentStreamOverflowError(TaskError):
    """The tower read too slowly; its stream ends with RESOURCE_EXHAUSTED."""

    def __init__(self, entity_id: str, limit: int) -> None:
        super().__init__(f"more than {limit} assignments for {entity_id} waiting; reconnect")
        self.entity_id = entity_id
        self.limit = limit


class AssignmentStreamClosedError(TaskError):
    """The engine is shutting down; the stream ends."""


TransactionHook = Callable[[aiosqlite.Connection], Awaitable[None]]
"""Runs inside the engine's transaction, e.g. to save the event cursor with the change."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    entity_id: str
    task_id: str
    state: TaskState
    task: task_pb2.Task
    robot_id: str | None
    """The robot holding the task (assigned or accepted)."""
    last_robot_id: str | None
    """The robot that held it last (after a requeue, completion or failure)."""
    attempts: int
    last_reason: str | None
    received_at: float
    assigned_at: float | None
    accepted_at: float | None
    finished_at: float | None
    wait_since: float | None

    @property
    def source(self) -> Point:
        return Point.from_proto(self.task.sources[0])


@dataclass(frozen=True, slots=True)
class TaskHistoryEntry:
    change: TaskChange
    robot_id: str | None
    attempt: int
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """For the heartbeat: ``pending`` queued on the gateway, ``active`` held by a robot."""

    pending: int
    active: int


def record_from_row(row: aiosqlite.Row) -> TaskRecord:
    """The record of a ``tasks`` row."""
    return TaskRecord(
        entity_id=row["entity_id"],
        task_id=row["task_id"],
        state=TaskState(row["state"]),
        task=task_pb2.Task.FromString(row["task"]),
        robot_id=row["robot_id"],
        last_robot_id=row["last_robot_id"],
        attempts=row["attempts"],
        last_reason=row["last_reason"],
        received_at=row["received_at"],
        assigned_at=row["assigned_at"],
        accepted_at=row["accepted_at"],
        finished_at=row["finished_at"],
        wait_since=row["wait_since"],
    )

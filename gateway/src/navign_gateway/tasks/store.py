"""The engine's tables (component ``tasks``), the reads of its records, and the writes that
move a task along, each in the caller's transaction.

- ``tasks``: one row per (entity, task id), its ``task.Task`` and its state;
- ``task_history``: every change, with its robot, attempt and reason;
- ``task_outbox``: the status reports still to deliver (:mod:`.outbox`);
- ``task_config``: the applied ``robot_selection`` config and its version.

:func:`write_change` is the one place a task changes state: the row update, the history line
and the queued report always go together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Final

import aiosqlite

from navign_gateway.tasks.mapping import urgency_of
from navign_gateway.tasks.model import (
    WIRE_STATUS,
    TaskChange,
    TaskCounts,
    TaskHistoryEntry,
    TaskRecord,
    TaskState,
    record_from_row,
)
from navign_gateway.tasks.outbox import MESSAGE_MAX, enqueue
from navign_proto.grpc import task_pb2
from navign_proto.wire import TaskStatusReport

MIGRATIONS: Final[list[str | Callable[[aiosqlite.Connection], Awaitable[None]]]] = [
    """
    CREATE TABLE tasks (
        entity_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL UNIQUE,
        task BLOB NOT NULL,
        urgency INTEGER NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'assigned', 'accepted', 'completed', 'failed')),
        robot_id TEXT,
        last_robot_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        last_reason TEXT,
        received_at REAL NOT NULL,
        assigned_at REAL,
        wait_since REAL,
        accepted_at REAL,
        finished_at REAL,
        PRIMARY KEY (entity_id, task_id),
        CHECK ((state IN ('assigned', 'accepted')) = (robot_id IS NOT NULL))
    );
    CREATE INDEX tasks_by_state ON tasks (entity_id, state, urgency DESC, seq);
    CREATE INDEX tasks_by_robot ON tasks (entity_id, robot_id) WHERE robot_id IS NOT NULL;
    CREATE TABLE task_history (
        id INTEGER PRIMARY KEY,
        entity_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        change TEXT NOT NULL,
        robot_id TEXT,
        attempt INTEGER NOT NULL,
        reason TEXT,
        at REAL NOT NULL,
        FOREIGN KEY (entity_id, task_id) REFERENCES tasks (entity_id, task_id) ON DELETE CASCADE
    );
    CREATE INDEX task_history_by_task ON task_history (entity_id, task_id, id);
    CREATE TABLE task_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        report TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE TABLE task_config (
        type TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        config TEXT NOT NULL
    );
    """,
]

#: The row update of each change (QUEUED is the insert itself).
_UPDATES: Final[Mapping[TaskChange, str]] = {
    TaskChange.ASSIGNED: "state = 'assigned', robot_id = :robot, attempts = :attempt,"
    " assigned_at = :now, wait_since = :now, accepted_at = NULL",
    TaskChange.ACCEPTED: "state = 'accepted', accepted_at = :now, wait_since = NULL",
    TaskChange.COMPLETED: "state = 'completed', robot_id = NULL, last_robot_id = :robot,"
    " finished_at = :now, wait_since = NULL",
    TaskChange.REQUEUED: "state = 'queued', robot_id = NULL, last_robot_id = :robot,"
    " last_reason = :reason, assigned_at = NULL, wait_since = NULL, accepted_at = NULL",
    TaskChange.FAILED: "state = 'failed', robot_id = NULL, last_robot_id = :robot,"
    " last_reason = :reason, finished_at = :now, wait_since = NULL",
}
_MESSAGES: Final[Mapping[TaskChange, str]] = {
    TaskChange.QUEUED: "queued on the gateway",
    TaskChange.ASSIGNED: "assigned to {robot} (attempt {attempt} of {max})",
    TaskChange.ACCEPTED: "accepted by {robot}",
    TaskChange.COMPLETED: "completed by {robot}",
    TaskChange.REQUEUED: "requeued after attempt {attempt} of {max}: {reason}",
    TaskChange.FAILED: "failed after {attempt} attempt(s): {reason}",
}


# -- reads ----------------------------------------------------------------------------------------


async def fetch_records(
    reader: aiosqlite.Connection, sql: str, params: tuple[object, ...]
) -> list[TaskRecord]:
    """The records of a ``SELECT * FROM tasks`` query."""
    async with reader.execute(sql, params) as cursor:
        return [record_from_row(row) for row in await cursor.fetchall()]


async def fetch_task(
    reader: aiosqlite.Connection, entity_id: str, task_id: str
) -> TaskRecord | None:
    async with reader.execute(
        "SELECT * FROM tasks WHERE entity_id = ? AND task_id = ?", (entity_id, task_id)
    ) as cursor:
        row = await cursor.fetchone()
    return None if row is None else record_from_row(row)


async def fetch_tasks(
    reader: aiosqlite.Connection, entity_id: str, states: tuple[TaskState, ...]
) -> list[TaskRecord]:
    """The entity's tasks in arrival order, only those in ``states`` (all when empty)."""
    wanted = [s.value for s in states] or [s.value for s in TaskState]
    marks = ",".join("?" * len(wanted))
    return await fetch_records(
        reader,
        f"SELECT * FROM tasks WHERE entity_id = ? AND state IN ({marks}) ORDER BY seq",  # noqa: S608
        (entity_id, *wanted),
    )


async def fetch_history(
    reader: aiosqlite.Connection, entity_id: str, task_id: str
) -> list[TaskHistoryEntry]:
    async with reader.execute(
        "SELECT change, robot_id, attempt, reason, at FROM task_history"
        " WHERE entity_id = ? AND task_id = ? ORDER BY id",
        (entity_id, task_id),
    ) as cursor:
        rows = await cursor.fetchall()
    return [TaskHistoryEntry(TaskChange(r[0]), r[1], int(r[2]), r[3], float(r[4])) for r in rows]


async def count_tasks(reader: aiosqlite.Connection) -> TaskCounts:
    """``pending``: queued; ``active``: assigned or accepted."""
    async with reader.execute("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state") as cursor:
        by_state = {row["state"]: int(row["n"]) for row in await cursor.fetchall()}
    return TaskCounts(
        pending=by_state.get(TaskState.QUEUED, 0),
        active=by_state.get(TaskState.ASSIGNED, 0) + by_state.get(TaskState.ACCEPTED, 0),
    )


# -- writes ---------------------------------------------------------------------------------------


async def insert_task(
    conn: aiosqlite.Connection, entity_id: str, task_id: str, task: task_pb2.Task, now: float
) -> TaskRecord | None:
    """Insert a queued task; its record, or None (and nothing written) when the (entity, task
    id) is already known. The QUEUED change itself is :func:`write_change`'s."""
    async with conn.execute(
        "SELECT 1 FROM tasks WHERE entity_id = ? AND task_id = ?", (entity_id, task_id)
    ) as cursor:
        if await cursor.fetchone() is not None:
            return None
    await conn.execute(
        "INSERT INTO tasks (entity_id, task_id, seq, task, urgency, state,"
        " received_at) VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM"
        " tasks), ?, ?, 'queued', ?)",
        (entity_id, task_id, task.SerializeToString(deterministic=True), urgency_of(task), now),
    )
    async with conn.execute(
        "SELECT * FROM tasks WHERE entity_id = ? AND task_id = ?", (entity_id, task_id)
    ) as cursor:
        row = await cursor.fetchone()
    assert row is not None  # inserted just above, in this transaction
    return record_from_row(row)


async def write_change(
    conn: aiosqlite.Connection,
    record: TaskRecord,
    change: TaskChange,
    now: float,
    robot_id: str | None,
    reason: str | None,
    *,
    max_attempts: int,
) -> None:
    """Apply one change to a task row, record it and queue its report, in the caller's
    transaction."""
    attempt = record.attempts + 1 if change is TaskChange.ASSIGNED else record.attempts
    params = {
        "entity": record.entity_id,
        "task": record.task_id,
        "robot": robot_id,
        "attempt": attempt,
        "reason": reason,
        "now": now,
    }
    if change is not TaskChange.QUEUED:
        await conn.execute(
            # _UPDATES is constant text; every value is a bound parameter.
            f"UPDATE tasks SET {_UPDATES[change]}"  # noqa: S608
            " WHERE entity_id = :entity AND task_id = :task",
            params,
        )
    await conn.execute(
        "INSERT INTO task_history (entity_id, task_id, change, robot_id, attempt, reason, at)"
        " VALUES (:entity, :task, :change, :robot, :attempt, :reason, :now)",
        {**params, "change": change.value},
    )
    message = _MESSAGES[change].format(
        robot=robot_id, attempt=attempt, max=max_attempts, reason=reason
    )
    report = TaskStatusReport(
        entity_id=record.entity_id,
        task_id=record.task_id,
        status=WIRE_STATUS[change],
        robot_id=None if change in (TaskChange.QUEUED, TaskChange.REQUEUED) else robot_id,
        progress_percent=100.0 if change is TaskChange.COMPLETED else None,
        message=message[:MESSAGE_MAX],
        at=datetime.fromtimestamp(now, UTC),
    )
    await enqueue(conn, report, now)

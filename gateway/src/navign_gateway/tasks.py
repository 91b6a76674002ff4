"""Robot tasks on the gateway: a persistent queue, robot choice, assignment streams, requeues and
the status reports that go to the server.

Life of a task (``TaskState``)::

    queued ──assign──▶ assigned ──accept──▶ accepted ──complete──▶ completed
      ▲                   │                    │
      └──── requeue ──────┴────────────────────┘      (after max_attempts: failed)

* **queued**: from a ``task_create`` event (:meth:`TaskEngine.create_from_event`); idempotent by
  (entity, ``task_id``), since events are replayed (protocol §4.2).
* **assigned**: to the best robot (:func:`navign_gateway.robots.rank_candidates`); a
  ``task.TaskAssignment`` goes to every tower streaming ``GetTaskAssignment`` for the entity.
* **accepted**: the assigned robot's report has ``state == BUSY`` and
  ``current_task_id == task id``.
* **completed**: after acceptance, a report from that robot whose ``current_task_id`` is not the
  task while its state is IDLE, BUSY or CHARGING (it finished, or went on to its next task:
  ``task.proto`` has no "done" field, so moving on is the only completion signal it carries).
* **requeued**: the robot went OFFLINE (reported, or silent: :meth:`RobotRegistry.sweep`) or
  ERROR; or the assignment was not accepted within ``accept_timeout`` seconds of the robot
  being free (the wait starts at assignment, and restarts when the robot completes another of
  its tasks; it does not run while the robot has an accepted task); or, after a gateway
  restart, the robot has not reported for ``offline_after``. A requeued task counts its
  attempts, records the reason (:meth:`TaskEngine.history`), and avoids its last robot when
  another one is eligible. When ``max_attempts`` assignments have failed it is **failed**.

Reports with ``state == UNSPECIFIED`` settle nothing. Every change is written, in the same
transaction, to an outbox of ``TaskStatusReport`` rows that :meth:`TaskEngine.flush_reports`
delivers in order to a :class:`TaskReporter` (the server); a failed delivery stays and is
retried, so a crash or an outage loses no report. Changes map to the wire's ``TaskStatus``
(:data:`WIRE_STATUS`): the wire has no "queued", so a task waiting on the gateway is reported
as ``assigned`` without a ``robot_id`` (assigned to this gateway, no robot yet).

Public: :class:`TaskEngine`, :class:`TaskReporter`, :class:`TaskRecord`, :class:`TaskState`,
:class:`TaskChange`, :class:`TaskCounts`, :class:`AssignmentStream`, :func:`task_from_event`
and the :class:`TaskError` family.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Protocol

import aiosqlite
from pydantic import ValidationError

from navign_gateway.db import Database
from navign_gateway.robots import (
    Clock,
    Point,
    RobotRecord,
    RobotRegistry,
    RobotState,
    SelectionConfig,
    rank_candidates,
)
from navign_proto.grpc import task_pb2
from navign_proto.wire import Priority, TaskCreateEvent, TaskStatus, TaskStatusReport, TaskType

log = logging.getLogger(__name__)

#: An assignment not accepted within this many seconds of the robot being free is requeued.
ACCEPT_TIMEOUT_S: Final = 30.0
#: Assignments per task before it fails.
MAX_ATTEMPTS: Final = 5
#: Unfinished tasks one robot may hold (the "load" of the score is divided by this).
LOAD_CAP: Final = 3
#: Live assignments buffered per tower stream; a tower further behind is disconnected.
STREAM_QUEUE_MAX: Final = 256
#: How often :meth:`TaskEngine.run` sweeps robots, checks timeouts and retries reports.
MAINTENANCE_INTERVAL_S: Final = 5.0
#: Undelivered reports kept; beyond this the oldest are dropped (the server keeps only the
#: latest status per task anyway).
OUTBOX_MAX: Final = 10_000
#: Finished tasks are kept this long so that a replayed ``task_create`` stays a no-op.
FINISHED_RETENTION_S: Final = 30 * 24 * 3600.0
#: The ``config_update`` type this engine reads.
CONFIG_TYPE: Final = "robot_selection"
MESSAGE_MAX: Final = 1000

_MIGRATIONS: Final[list[str | Callable[[aiosqlite.Connection], Awaitable[None]]]] = [
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

_TYPES: Final[Mapping[TaskType, task_pb2.TaskType]] = {
    TaskType.DELIVERY: task_pb2.TASK_TYPE_DELIVERY,
    TaskType.PATROL: task_pb2.TASK_TYPE_PATROL,
    TaskType.RETURN_HOME: task_pb2.TASK_TYPE_RETURN_HOME,
    TaskType.EMERGENCY: task_pb2.TASK_TYPE_EMERGENCY,
}
_PRIORITIES: Final[Mapping[Priority, task_pb2.Priority]] = {
    Priority.LOW: task_pb2.PRIORITY_LOW,
    Priority.NORMAL: task_pb2.PRIORITY_NORMAL,
    Priority.HIGH: task_pb2.PRIORITY_HIGH,
    Priority.URGENT: task_pb2.PRIORITY_URGENT,
}
#: Emergency tasks go before every other; then higher priority; then first come.
_EMERGENCY_URGENCY: Final = 8


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


def task_from_event(event: TaskCreateEvent, received_at: float) -> task_pb2.Task:
    """The ``task.Task`` of a ``task_create`` event, as protocol §7.1 maps it.

    ``type`` and ``priority`` by name (a type ``task.proto`` does not know becomes
    ``TASK_TYPE_UNSPECIFIED``); each location becomes a ``task.Location`` (``floor`` "" when
    absent) and its ``area_id`` goes into ``metadata`` as ``source.N.area_id`` /
    ``terminal.N.area_id``, N being the 0-based index in the list (overriding an event key of
    the same name); ``created_at`` in unix seconds (floor), the receive time when absent.
    """
    known = event.known_type
    metadata = dict(event.metadata)
    for prefix, locations in (("source", event.sources), ("terminal", event.terminals)):
        for index, location in enumerate(locations):
            metadata[f"{prefix}.{index}.area_id"] = location.area_id
    created = event.created_at.timestamp() if event.created_at is not None else received_at
    return task_pb2.Task(
        id=event.task_id,
        type=task_pb2.TASK_TYPE_UNSPECIFIED if known is None else _TYPES[known],
        sources=[
            task_pb2.Location(x=p.x, y=p.y, z=p.z, floor=p.floor or "") for p in event.sources
        ],
        terminals=[
            task_pb2.Location(x=p.x, y=p.y, z=p.z, floor=p.floor or "") for p in event.terminals
        ],
        priority=_PRIORITIES[event.priority],
        created_at=math.floor(created),
        entity_id=event.entity_id,
        metadata=metadata,
    )


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


def _record(row: aiosqlite.Row) -> TaskRecord:
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


class TaskEngine:
    """The gateway's task queue and dispatcher; see the module docstring for the rules.

    All changes run under one lock, so that reports, sweeps, new tasks and new streams see
    one order; deliveries to the server happen outside it (:meth:`flush_reports`).
    """

    def __init__(
        self,
        db: Database,
        registry: RobotRegistry,
        reporter: TaskReporter,
        *,
        clock: Clock | None = None,
        accept_timeout: float = ACCEPT_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
        load_cap: int = LOAD_CAP,
        stream_queue_size: int = STREAM_QUEUE_MAX,
        retention: float = FINISHED_RETENTION_S,
    ) -> None:
        if accept_timeout <= 0 or max_attempts < 1 or load_cap < 1 or stream_queue_size < 1:
            raise ValueError("timeouts, attempts, load cap and queue size must be positive")
        self.db = db
        self.registry = registry
        self.reporter = reporter
        self.clock = clock if clock is not None else registry.clock
        self.accept_timeout = accept_timeout
        self.max_attempts = max_attempts
        self.load_cap = load_cap
        self.stream_queue_size = stream_queue_size
        self.retention = retention
        self._lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._streams: dict[str, set[AssignmentStream]] = {}
        self._config = SelectionConfig()
        self._config_version: int | None = None
        self._counts = TaskCounts(0, 0)
        self._started_at = self.clock()
        self._closed = False
        self._failing_since: float | None = None
        registry.add_listener(self._on_robot)

    # -- setup and views -------------------------------------------------------------------

    async def migrate(self) -> None:
        """Create or upgrade the tables (component ``tasks``) and load the stored config."""
        await self.db.migrate("tasks", _MIGRATIONS)
        async with self.db.reader.execute(
            "SELECT version, config FROM task_config WHERE type = ?", (CONFIG_TYPE,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is not None:
            self._config = SelectionConfig.from_mapping(json.loads(row["config"]))
            self._config_version = int(row["version"])
        await self._refresh_counts()
        self._started_at = self.clock()

    @property
    def selection(self) -> SelectionConfig:
        return self._config

    @property
    def config_version(self) -> int | None:
        """The version of the applied ``robot_selection`` config; None: defaults."""
        return self._config_version

    def counts(self) -> TaskCounts:
        return self._counts

    async def _refresh_counts(self) -> None:
        async with self.db.reader.execute(
            "SELECT state, COUNT(*) AS n FROM tasks GROUP BY state"
        ) as cursor:
            by_state = {row["state"]: int(row["n"]) for row in await cursor.fetchall()}
        self._counts = TaskCounts(
            pending=by_state.get(TaskState.QUEUED, 0),
            active=by_state.get(TaskState.ASSIGNED, 0) + by_state.get(TaskState.ACCEPTED, 0),
        )

    async def get(self, entity_id: str, task_id: str) -> TaskRecord | None:
        async with self.db.reader.execute(
            "SELECT * FROM tasks WHERE entity_id = ? AND task_id = ?", (entity_id, task_id)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _record(row)

    async def tasks(self, entity_id: str, *states: TaskState) -> list[TaskRecord]:
        """The entity's tasks in arrival order, optionally only those in ``states``."""
        wanted = [s.value for s in states] or [s.value for s in TaskState]
        marks = ",".join("?" * len(wanted))
        async with self.db.reader.execute(
            f"SELECT * FROM tasks WHERE entity_id = ? AND state IN ({marks}) ORDER BY seq",  # noqa: S608
            (entity_id, *wanted),
        ) as cursor:
            return [_record(row) for row in await cursor.fetchall()]

    async def history(self, entity_id: str, task_id: str) -> list[TaskHistoryEntry]:
        async with self.db.reader.execute(
            "SELECT change, robot_id, attempt, reason, at FROM task_history"
            " WHERE entity_id = ? AND task_id = ? ORDER BY id",
            (entity_id, task_id),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            TaskHistoryEntry(TaskChange(r[0]), r[1], int(r[2]), r[3], float(r[4])) for r in rows
        ]

    async def pending_reports(self) -> list[TaskStatusReport]:
        """The outbox, oldest first."""
        async with self.db.reader.execute("SELECT report FROM task_outbox ORDER BY id") as cur:
            rows = await cur.fetchall()
        return [TaskStatusReport.model_validate_json(r[0]) for r in rows]

    # -- inputs ----------------------------------------------------------------------------

    async def create_from_event(
        self, event: TaskCreateEvent, *, also: TransactionHook | None = None
    ) -> bool:
        """Queue the event's task and try to assign it; False (and nothing changed) when the
        (entity, task id) is already known. ``also`` runs in the same transaction either way."""
        async with self._lock:
            now = self.clock()
            task = task_from_event(event, now)
            urgency = int(task.priority) + (
                _EMERGENCY_URGENCY if task.type == task_pb2.TASK_TYPE_EMERGENCY else 0
            )
            async with self.db.transaction() as conn:
                async with conn.execute(
                    "SELECT 1 FROM tasks WHERE entity_id = ? AND task_id = ?",
                    (event.entity_id, event.task_id),
                ) as cursor:
                    known = await cursor.fetchone() is not None
                if not known:
                    await conn.execute(
                        "INSERT INTO tasks (entity_id, task_id, seq, task, urgency, state,"
                        " received_at) VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM"
                        " tasks), ?, ?, 'queued', ?)",
                        (
                            event.entity_id,
                            event.task_id,
                            task.SerializeToString(deterministic=True),
                            urgency,
                            now,
                        ),
                    )
                    async with conn.execute(
                        "SELECT * FROM tasks WHERE entity_id = ? AND task_id = ?",
                        (event.entity_id, event.task_id),
                    ) as cursor:
                        row = await cursor.fetchone()
                    assert row is not None  # inserted just above, in this transaction
                    await self._transition(conn, _record(row), TaskChange.QUEUED, now, None)
                if also is not None:
                    await also(conn)
            if known:
                log.debug("task %s/%s already known", event.entity_id, event.task_id)
                return False
            log.info("task %s/%s queued", event.entity_id, event.task_id)
            await self._refresh_counts()
            await self._dispatch(event.entity_id)
            return True

    async def apply_config(
        self, config: Mapping[str, object], version: int, *, also: TransactionHook | None = None
    ) -> bool:
        """Apply a ``robot_selection`` config when ``version`` is above the stored one (it
        survives restarts). Raises :class:`InvalidSelectionConfigError` or ``ValueError``
        (bad version) before changing anything; False when the version is not newer."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"config version must be a non-negative integer, not {version!r}")
        selection = SelectionConfig.from_mapping(config)
        async with self._lock:
            async with self.db.transaction() as conn:
                async with conn.execute(
                    "SELECT version FROM task_config WHERE type = ?", (CONFIG_TYPE,)
                ) as cursor:
                    row = await cursor.fetchone()
                newer = row is None or version > int(row[0])
                if newer:
                    await conn.execute(
                        "INSERT INTO task_config (type, version, config) VALUES (?, ?, ?)"
                        " ON CONFLICT (type) DO UPDATE SET version = excluded.version,"
                        " config = excluded.config",
                        (CONFIG_TYPE, version, json.dumps(selection.to_mapping())),
                    )
                if also is not None:
                    await also(conn)
            if not newer:
                log.debug("robot_selection version %d ignored (have %s)", version, row)
                return False
            self._config, self._config_version = selection, version
            log.info("robot_selection version %d applied: %s", version, selection)
            await self._dispatch_all()
            return True

    async def _on_robot(self, robot: RobotRecord) -> None:
        """A robot's new status: settle its tasks (accept, complete, requeue), then assign."""
        async with self._lock:
            held = await self._query(
                "SELECT * FROM tasks WHERE entity_id = ? AND robot_id = ? ORDER BY seq",
                (robot.entity_id, robot.robot_id),
            )
            now = self.clock()
            changed = False
            if held and robot.state in (RobotState.OFFLINE, RobotState.ERROR):
                async with self.db.transaction() as conn:
                    for record in held:
                        reason = f"robot {robot.robot_id} is {robot.state.name}"
                        await self._requeue(conn, record, reason, now)
                changed = True
            elif held and robot.state is not RobotState.UNSPECIFIED:
                current = robot.current_task_id
                accept = [
                    r
                    for r in held
                    if r.state is TaskState.ASSIGNED
                    and robot.state is RobotState.BUSY
                    and r.task_id == current
                ]
                complete = [
                    r for r in held if r.state is TaskState.ACCEPTED and r.task_id != current
                ]
                if accept or complete:
                    async with self.db.transaction() as conn:
                        for r in complete:
                            await self._transition(
                                conn, r, TaskChange.COMPLETED, now, robot.robot_id
                            )
                        for r in accept:
                            await self._transition(
                                conn, r, TaskChange.ACCEPTED, now, robot.robot_id
                            )
                        if complete:  # the robot is free for its other assignments: new wait
                            await conn.execute(
                                "UPDATE tasks SET wait_since = ? WHERE entity_id = ?"
                                " AND robot_id = ? AND state = 'assigned'",
                                (now, robot.entity_id, robot.robot_id),
                            )
                    changed = True
            if changed:
                await self._refresh_counts()
            if changed or robot.state is RobotState.IDLE:
                await self._dispatch(robot.entity_id)

    # -- maintenance -----------------------------------------------------------------------

    async def check_timeouts(self) -> None:
        """Requeue the assignments whose acceptance timed out, whose robot is OFFLINE or
        ERROR, or whose robot has not reported since the gateway started (for
        ``offline_after``); then assign what is queued."""
        async with self._lock:
            now = self.clock()
            held = await self._query(
                "SELECT * FROM tasks WHERE state IN ('assigned', 'accepted') ORDER BY seq", ()
            )
            working = {(r.entity_id, r.robot_id) for r in held if r.state is TaskState.ACCEPTED}
            due: list[tuple[TaskRecord, str]] = []
            for record in held:
                assert record.robot_id is not None  # the table's CHECK
                robot = self.registry.get(record.entity_id, record.robot_id)
                if robot is None:
                    if now - self._started_at >= self.registry.offline_after:
                        due.append((record, f"robot {record.robot_id} not heard from"))
                elif robot.state in (RobotState.OFFLINE, RobotState.ERROR):
                    due.append((record, f"robot {record.robot_id} is {robot.state.name}"))
                elif (
                    record.state is TaskState.ASSIGNED
                    and (record.entity_id, record.robot_id) not in working
                    and record.wait_since is not None
                    and now - record.wait_since >= self.accept_timeout
                ):
                    reason = f"not accepted by {record.robot_id} within {self.accept_timeout:g} s"
                    due.append((record, reason))
            if due:
                async with self.db.transaction() as conn:
                    for record, reason in due:
                        await self._requeue(conn, record, reason, now)
                await self._refresh_counts()
            await self._dispatch_all()

    async def prune(self) -> int:
        """Forget finished tasks older than ``retention``; returns how many."""
        async with self._lock, self.db.transaction() as conn:
            cursor = await conn.execute(
                "DELETE FROM tasks WHERE state IN ('completed', 'failed') AND finished_at < ?",
                (self.clock() - self.retention,),
            )
            return cursor.rowcount

    async def run(self, interval: float = MAINTENANCE_INTERVAL_S) -> None:
        """Until cancelled: sweep the robots, check timeouts, deliver reports, prune; every
        ``interval`` seconds, or sooner when a change left reports to deliver."""
        while True:
            try:
                await self.registry.sweep()
                await self.check_timeouts()
                await self.flush_reports()
                await self.prune()
            except Exception:
                log.exception("task maintenance failed; retrying in %g s", interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def flush_reports(self, limit: int = OUTBOX_MAX) -> int:
        """Deliver the outbox in order, stopping at the first failure (which stays, with its
        error, for the next flush). Returns how many were delivered."""
        delivered = 0
        async with self._flush_lock:
            while delivered < limit:
                async with self.db.reader.execute(
                    "SELECT id, report FROM task_outbox ORDER BY id LIMIT 100"
                ) as cursor:
                    rows = await cursor.fetchall()
                if not rows:
                    break
                for row in rows:
                    try:
                        report = TaskStatusReport.model_validate_json(row["report"])
                    except ValidationError as exc:
                        log.error("dropping an unreadable task report %d: %s", row["id"], exc)
                        await self._delete_report(row["id"])
                        continue
                    try:
                        await self.reporter.report_task(report)
                    except Exception as exc:  # noqa: BLE001 - any failure: keep it, retry later
                        await self._report_failed(row["id"], exc)
                        return delivered
                    await self._delete_report(row["id"])
                    delivered += 1
                    if self._failing_since is not None:
                        log.info("task reports delivered again")
                        self._failing_since = None
        return delivered

    async def _delete_report(self, report_id: int) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM task_outbox WHERE id = ?", (report_id,))

    async def _report_failed(self, report_id: int, exc: Exception) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE task_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (repr(exc)[:MESSAGE_MAX], report_id),
            )
        if self._failing_since is None:
            self._failing_since = self.clock()
            log.warning("task report not delivered (kept for retry): %r", exc)
        else:
            log.debug("task report still not delivered: %r", exc)

    # -- streams ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(self, entity_id: str) -> AsyncIterator[AssignmentStream]:
        """A stream of the entity's assignments: the outstanding ones (assigned, not yet
        accepted) first, then each new one, for as long as the block runs."""
        async with self._lock:
            if self._closed:
                raise AssignmentStreamClosedError(entity_id)
            outstanding = await self._query(
                "SELECT * FROM tasks WHERE entity_id = ? AND state = 'assigned'"
                " ORDER BY assigned_at, seq",
                (entity_id,),
            )
            stream = AssignmentStream(
                entity_id,
                (_assignment(r) for r in outstanding),
                self.stream_queue_size,
            )
            self._streams.setdefault(entity_id, set()).add(stream)
        try:
            yield stream
        finally:
            streams = self._streams.get(entity_id)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._streams[entity_id]

    def close_streams(self) -> None:
        """End every assignment stream (shutdown); later subscriptions are refused."""
        self._closed = True
        for streams in self._streams.values():
            for stream in streams:
                stream.close()

    def stream_count(self, entity_id: str) -> int:
        return len(self._streams.get(entity_id, ()))

    # -- internals (called with the lock held) ---------------------------------------------

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[TaskRecord]:
        # Under the engine lock the reader sees every change: all of them commit under it.
        async with self.db.reader.execute(sql, params) as cursor:
            return [_record(row) for row in await cursor.fetchall()]

    async def _dispatch_all(self) -> None:
        async with self.db.reader.execute(
            "SELECT DISTINCT entity_id FROM tasks WHERE state = 'queued' ORDER BY entity_id"
        ) as cursor:
            entities = [row[0] for row in await cursor.fetchall()]
        for entity_id in entities:
            await self._dispatch(entity_id)

    async def _dispatch(self, entity_id: str) -> None:
        """Assign the entity's queued tasks, most urgent first, each to its best robot."""
        robots = self.registry.robots(entity_id)
        if not any(r.state is RobotState.IDLE for r in robots):
            return
        queued = await self._query(
            "SELECT * FROM tasks WHERE entity_id = ? AND state = 'queued'"
            " ORDER BY urgency DESC, seq",
            (entity_id,),
        )
        if not queued:
            return
        async with self.db.reader.execute(
            "SELECT robot_id, COUNT(*) FROM tasks WHERE entity_id = ? AND robot_id IS NOT NULL"
            " GROUP BY robot_id",
            (entity_id,),
        ) as cursor:
            loads = {row[0]: int(row[1]) for row in await cursor.fetchall()}
        now = self.clock()
        sent: list[task_pb2.TaskAssignment] = []
        async with self.db.transaction() as conn:
            for record in queued:
                ranked = rank_candidates(
                    robots,
                    record.source,
                    loads,
                    self._config,
                    load_cap=self.load_cap,
                    avoid=record.last_robot_id,
                )
                if not ranked:
                    break  # eligibility does not depend on the task: nobody is free
                best = ranked[0]
                reason = f"score {best.score:.4f} of {len(ranked)} candidate(s)"
                await self._transition(
                    conn, record, TaskChange.ASSIGNED, now, best.robot_id, reason
                )
                loads[best.robot_id] = loads.get(best.robot_id, 0) + 1
                sent.append(task_pb2.TaskAssignment(robot_id=best.robot_id, task=record.task))
                log.info("task %s/%s -> %s (%s)", entity_id, record.task_id, best.robot_id, reason)
        if sent:
            await self._refresh_counts()
            for stream in list(self._streams.get(entity_id, ())):
                for assignment in sent:
                    stream.offer(assignment)

    async def _requeue(
        self, conn: aiosqlite.Connection, record: TaskRecord, reason: str, now: float
    ) -> None:
        failed = record.attempts >= self.max_attempts
        change = TaskChange.FAILED if failed else TaskChange.REQUEUED
        log.warning("task %s/%s %s: %s", record.entity_id, record.task_id, change.value, reason)
        await self._transition(conn, record, change, now, record.robot_id, reason)

    async def _transition(
        self,
        conn: aiosqlite.Connection,
        record: TaskRecord,
        change: TaskChange,
        now: float,
        robot_id: str | None,
        reason: str | None = None,
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
            robot=robot_id, attempt=attempt, max=self.max_attempts, reason=reason
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
        await conn.execute(
            "INSERT INTO task_outbox (report, created_at) VALUES (?, ?)",
            (report.model_dump_json(exclude_none=True), now),
        )
        await conn.execute(
            "DELETE FROM task_outbox WHERE id <= (SELECT MAX(id) FROM task_outbox) - ?",
            (OUTBOX_MAX,),
        )
        self._wake.set()


def _assignment(record: TaskRecord) -> task_pb2.TaskAssignment:
    return task_pb2.TaskAssignment(robot_id=record.robot_id or "", task=record.task)

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

This module is the engine: it holds the lock, reads, decides and writes. The rest is in
:mod:`.model` (states, records, errors), :mod:`.mapping` (``task_create`` to ``task.Task``),
:mod:`.rules` (the decisions above, without I/O), :mod:`.store` (the tables, their reads and
the writes of a change), :mod:`.outbox` (report delivery) and :mod:`.streams` (assignment
streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Final

import aiosqlite

from navign_gateway.db import Database
from navign_gateway.robots import Clock, RobotRecord, RobotRegistry, RobotState, SelectionConfig
from navign_gateway.tasks.mapping import task_from_event
from navign_gateway.tasks.model import (
    WIRE_STATUS,
    AssignmentStreamClosedError,
    AssignmentStreamOverflowError,
    TaskChange,
    TaskCounts,
    TaskError,
    TaskHistoryEntry,
    TaskRecord,
    TaskReporter,
    TaskState,
    TransactionHook,
)
from navign_gateway.tasks.outbox import OUTBOX_MAX, ReportOutbox
from navign_gateway.tasks.rules import LOST, overdue, plan_assignments, settle
from navign_gateway.tasks.store import (
    MIGRATIONS,
    count_tasks,
    fetch_history,
    fetch_records,
    fetch_task,
    fetch_tasks,
    insert_task,
    write_change,
)
from navign_gateway.tasks.streams import AssignmentStream, assignment_of
from navign_proto.grpc import task_pb2
from navign_proto.wire import TaskCreateEvent, TaskStatusReport

__all__ = [
    "ACCEPT_TIMEOUT_S",
    "CONFIG_TYPE",
    "FINISHED_RETENTION_S",
    "LOAD_CAP",
    "MAINTENANCE_INTERVAL_S",
    "MAX_ATTEMPTS",
    "STREAM_QUEUE_MAX",
    "WIRE_STATUS",
    "AssignmentStream",
    "AssignmentStreamClosedError",
    "AssignmentStreamOverflowError",
    "TaskChange",
    "TaskCounts",
    "TaskEngine",
    "TaskError",
    "TaskHistoryEntry",
    "TaskRecord",
    "TaskReporter",
    "TaskState",
    "TransactionHook",
    "task_from_event",
]

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
#: Finished tasks are kept this long so that a replayed ``task_create`` stays a no-op.
FINISHED_RETENTION_S: Final = 30 * 24 * 3600.0
#: The ``config_update`` type this engine reads.
CONFIG_TYPE: Final = "robot_selection"


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
        self._outbox = ReportOutbox(db, self.clock)
        self._wake = asyncio.Event()
        self._streams: dict[str, set[AssignmentStream]] = {}
        self._config = SelectionConfig()
        self._config_version: int | None = None
        self._counts = TaskCounts(0, 0)
        self._started_at = self.clock()
        self._closed = False
        registry.add_listener(self._on_robot)

    # -- setup and views -------------------------------------------------------------------

    async def migrate(self) -> None:
        """Create or upgrade the tables (component ``tasks``) and load the stored config."""
        await self.db.migrate("tasks", MIGRATIONS)
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
        self._counts = await count_tasks(self.db.reader)

    async def get(self, entity_id: str, task_id: str) -> TaskRecord | None:
        return await fetch_task(self.db.reader, entity_id, task_id)

    async def tasks(self, entity_id: str, *states: TaskState) -> list[TaskRecord]:
        """The entity's tasks in arrival order, optionally only those in ``states``."""
        return await fetch_tasks(self.db.reader, entity_id, states)

    async def history(self, entity_id: str, task_id: str) -> list[TaskHistoryEntry]:
        return await fetch_history(self.db.reader, entity_id, task_id)

    async def pending_reports(self) -> list[TaskStatusReport]:
        """The outbox, oldest first."""
        return await self._outbox.pending()

    # -- inputs ----------------------------------------------------------------------------

    async def create_from_event(
        self, event: TaskCreateEvent, *, also: TransactionHook | None = None
    ) -> bool:
        """Queue the event's task and try to assign it; False (and nothing changed) when the
        (entity, task id) is already known. ``also`` runs in the same transaction either way."""
        async with self._lock:
            now = self.clock()
            task = task_from_event(event, now)
            async with self.db.transaction() as conn:
                record = await insert_task(conn, event.entity_id, event.task_id, task, now)
                known = record is None
                if record is not None:
                    await self._transition(conn, record, TaskChange.QUEUED, now, None)
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
            if held and robot.state in LOST:
                async with self.db.transaction() as conn:
                    for record in held:
                        reason = f"robot {robot.robot_id} is {robot.state.name}"
                        await self._requeue(conn, record, reason, now)
                changed = True
            elif held and robot.state is not RobotState.UNSPECIFIED:
                accept, complete = settle(held, robot)
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
            due = overdue(
                held,
                self.registry,
                now=now,
                started_at=self._started_at,
                accept_timeout=self.accept_timeout,
            )
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
        return await self._outbox.flush(self.reporter, limit)

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
                (assignment_of(r) for r in outstanding),
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
        return await fetch_records(self.db.reader, sql, params)

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
        plan = plan_assignments(queued, robots, loads, self._config, load_cap=self.load_cap)
        sent: list[task_pb2.TaskAssignment] = []
        async with self.db.transaction() as conn:
            for record, robot_id, reason in plan:
                await self._transition(conn, record, TaskChange.ASSIGNED, now, robot_id, reason)
                sent.append(task_pb2.TaskAssignment(robot_id=robot_id, task=record.task))
                log.info("task %s/%s -> %s (%s)", entity_id, record.task_id, robot_id, reason)
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
        await write_change(
            conn, record, change, now, robot_id, reason, max_attempts=self.max_attempts
        )
        self._wake.set()

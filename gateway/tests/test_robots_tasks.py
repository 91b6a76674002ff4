"""Robots and tasks without the gRPC layer: the registry, robot choice, the task_create mapping,
and the engine's queue, requeues, outbox, configuration and restarts on a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from navign_gateway.db import Database
from navign_gateway.robots import (
    InvalidRobotReportError,
    InvalidSelectionConfigError,
    Point,
    RobotRecord,
    RobotRegistry,
    RobotRegistryFullError,
    RobotState,
    SelectionConfig,
    rank_candidates,
)
from navign_gateway.tasks import (
    WIRE_STATUS,
    AssignmentStream,
    AssignmentStreamClosedError,
    AssignmentStreamOverflowError,
    TaskChange,
    TaskCounts,
    TaskEngine,
    TaskRecord,
    TaskState,
    task_from_event,
)
from navign_proto.grpc import task_pb2
from navign_proto.wire import TaskCreateEvent, TaskStatus, TaskStatusReport

from .conftest import ENTITY, T0, Clock, Reporter


def robot(
    robot_id: str,
    *,
    state: int = task_pb2.ROBOT_STATE_IDLE,
    battery: float = 80.0,
    x: float = 0.0,
    y: float = 0.0,
    floor: str = "",
    task: str = "",
    entity: str = ENTITY,
) -> task_pb2.RobotInfo:
    return task_pb2.RobotInfo(
        id=robot_id,
        name=f"Robot {robot_id}",
        state=state,  # type: ignore[arg-type]
        current_location=task_pb2.Location(x=x, y=y, floor=floor),
        battery_level=battery,
        current_task_id=task,
        last_seen=1,
        entity_id=entity,
    )


def task_event(task_id: str, **overrides: Any) -> TaskCreateEvent:
    payload: dict[str, Any] = {
        "task_id": task_id,
        "type": "delivery",
        "priority": "normal",
        "entity_id": ENTITY,
        "sources": [{"area_id": "area-atrium", "x": 0, "y": 0}],
        "terminals": [{"area_id": "area-food", "x": 5, "y": 6, "floor": "F2"}],
    }
    payload.update(overrides)
    return TaskCreateEvent.model_validate(payload)


@dataclass
class Rig:
    path: Path
    clock: Clock
    reporter: Reporter
    db: Database
    registry: RobotRegistry
    engine: TaskEngine

    async def reopen(self, **engine_options: Any) -> None:
        """A gateway restart: new database connections, registry and engine; same file."""
        await self.db.close()
        self.db = Database(self.path)
        await self.db.open()
        self.registry = RobotRegistry(clock=self.clock)
        self.engine = TaskEngine(self.db, self.registry, self.reporter, **engine_options)
        await self.engine.migrate()

    async def fleet(self) -> None:
        """The scoring fleet around a task at (0, 0):
        r-a battery 90 at distance 10, r-b 60 at 0, r-c 100 at 20 (the farthest),
        r-d charging, r-e with 20 % (below min_battery)."""
        await self.registry.report(robot("r-a", battery=90, x=6, y=8))
        await self.registry.report(robot("r-b", battery=60))
        await self.registry.report(robot("r-c", battery=100, x=12, y=16))
        await self.registry.report(robot("r-d", battery=100, state=task_pb2.ROBOT_STATE_CHARGING))
        await self.registry.report(robot("r-e", battery=20))


async def task_of(rig: Rig, task_id: str) -> TaskRecord:
    record = await rig.engine.get(ENTITY, task_id)
    assert record is not None, task_id
    return record


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = Clock()
    reporter = Reporter()
    path = tmp_path / "gateway.sqlite3"
    db = Database(path)
    await db.open()
    registry = RobotRegistry(clock=clock)
    engine = TaskEngine(db, registry, reporter)
    await engine.migrate()
    the_rig = Rig(path, clock, reporter, db, registry, engine)
    try:
        yield the_rig
    finally:
        await the_rig.db.close()


# -- registry ---------------------------------------------------------------------------------


def test_robot_state_numbers_are_the_wires() -> None:
    wire = {name.removeprefix("ROBOT_STATE_"): n for name, n in task_pb2.RobotState.items()}
    assert {s.name: s.value for s in RobotState} == wire


async def test_registry_keeps_the_latest_report_with_its_receive_time() -> None:
    clock = Clock()
    registry = RobotRegistry(clock=clock)
    await registry.report(robot("r-1", battery=90))
    clock.advance(2.5)
    await registry.report(robot("r-1", battery=88, state=task_pb2.ROBOT_STATE_BUSY, task="t-1"))
    record = registry.get(ENTITY, "r-1")
    assert record is not None
    assert (record.battery, record.state, record.current_task_id) == (88, RobotState.BUSY, "t-1")
    assert record.last_seen == T0 + 2.5  # the gateway's clock, not the tower's last_seen=1
    assert record.reported_last_seen == 1
    assert record.location == Point(0.0, 0.0, 0.0, "")
    assert registry.get("mall-2", "r-1") is None  # robots are per entity
    assert record.to_proto().battery_level == 88


@pytest.mark.parametrize(
    ("info", "field_name"),
    [
        pytest.param(robot("r-1", battery=-0.1), "robot.battery_level", id="battery<0"),
        pytest.param(robot("r-1", battery=100.5), "robot.battery_level", id="battery>100"),
        pytest.param(robot("r-1", battery=math.nan), "robot.battery_level", id="battery-nan"),
        pytest.param(robot(""), "robot.id", id="empty-id"),
        pytest.param(robot("r 1"), "robot.id", id="id-with-space"),
        pytest.param(robot("r-1", entity=""), "robot.entity_id", id="empty-entity"),
        pytest.param(robot("r-1", state=9), "robot.state", id="unknown-state"),
        pytest.param(robot("r-1", x=math.inf), "robot.current_location.x", id="x-inf"),
        pytest.param(robot("r-1", task="t" * 300), "robot.current_task_id", id="long-task"),
    ],
)
async def test_invalid_reports_are_refused_and_change_nothing(
    info: task_pb2.RobotInfo, field_name: str
) -> None:
    registry = RobotRegistry(clock=Clock())
    heard: list[RobotRecord] = []

    async def listener(record: RobotRecord) -> None:
        heard.append(record)

    registry.add_listener(listener)
    before = await registry.report(robot("r-1", battery=50))
    with pytest.raises(InvalidRobotReportError) as excinfo:
        await registry.report(info)
    assert excinfo.value.field == field_name
    assert registry.get(ENTITY, "r-1") is before
    assert registry.robots(ENTITY) == [before]
    assert heard == [before]


async def test_silent_robots_go_offline_at_the_sweep_and_are_forgotten_later() -> None:
    clock = Clock()
    registry = RobotRegistry(clock=clock, offline_after=30, forget_after=3600)
    await registry.report(robot("r-a"))
    clock.advance(20)
    await registry.report(robot("r-b"))
    clock.advance(9.5)
    assert await registry.sweep() == []  # r-a silent 29.5 s
    clock.advance(0.5)
    offline = await registry.sweep()
    assert [(r.robot_id, r.state) for r in offline] == [("r-a", RobotState.OFFLINE)]
    assert registry.online_count() == 1
    assert await registry.sweep() == []  # already offline: not reported twice
    clock.advance(3600)
    await registry.sweep()
    assert registry.robots(ENTITY) == []
    assert registry.online_count() == 0


async def test_a_full_registry_refuses_new_robots_only() -> None:
    registry = RobotRegistry(clock=Clock(), max_robots=2)
    await registry.report(robot("r-a"))
    await registry.report(robot("r-b", entity="mall-2"))
    with pytest.raises(RobotRegistryFullError):
        await registry.report(robot("r-c"))
    await registry.report(robot("r-a", battery=10))  # a known robot still reports
    assert [r.robot_id for r in registry.robots(ENTITY)] == ["r-a"]
    assert registry.get(ENTITY, "r-c") is None


# -- robot choice -----------------------------------------------------------------------------


def _records(*infos: task_pb2.RobotInfo) -> list[RobotRecord]:
    from navign_gateway.robots import record_from_info

    return [record_from_info(info, T0) for info in infos]


FLEET = (
    robot("r-a", battery=90, x=6, y=8),
    robot("r-b", battery=60),
    robot("r-c", battery=100, x=12, y=16),
    robot("r-d", battery=100, state=task_pb2.ROBOT_STATE_CHARGING),
    robot("r-e", battery=20),
)


def test_scores_match_the_hand_computation() -> None:
    ranked = rank_candidates(_records(*FLEET), Point(0, 0), {}, SelectionConfig(), load_cap=3)
    # r-a: 0.6*0.90 + 0.3*(1 - 10/20) + 0.1*1 = 0.79
    # r-b: 0.6*0.60 + 0.3*(1 - 0/20)  + 0.1*1 = 0.76
    # r-c: 0.6*1.00 + 0.3*(1 - 20/20) + 0.1*1 = 0.70
    # r-d is charging, r-e has 20 % < 25 %: not candidates.
    assert [(c.robot_id, round(c.score, 9)) for c in ranked] == [
        ("r-a", 0.79),
        ("r-b", 0.76),
        ("r-c", 0.7),
    ]
    assert ranked[0].distance == 10.0
    assert ranked[0].distance_norm == 0.5


def test_weights_and_min_battery_change_the_choice() -> None:
    config = SelectionConfig.from_mapping(
        {"weights": {"battery": 0.2, "distance": 0.8, "load": 0}, "min_battery": 10}
    )
    ranked = rank_candidates(_records(*FLEET), Point(0, 0), {}, config, load_cap=3)
    # r-b: 0.2*0.6 + 0.8*1 = 0.92; r-e: 0.2*0.2 + 0.8*1 = 0.84; r-a: 0.18 + 0.4 = 0.58;
    # r-c: 0.2 + 0 = 0.2
    assert [(c.robot_id, round(c.score, 9)) for c in ranked] == [
        ("r-b", 0.92),
        ("r-e", 0.84),
        ("r-a", 0.58),
        ("r-c", 0.2),
    ]


def test_load_counts_and_ties_go_to_the_smaller_id() -> None:
    twins = _records(robot("r-b", battery=70, x=3), robot("r-a", battery=70, x=3))
    ranked = rank_candidates(twins, Point(0, 0), {}, SelectionConfig(), load_cap=3)
    assert [c.robot_id for c in ranked] == ["r-a", "r-b"]  # equal scores
    ranked = rank_candidates(twins, Point(0, 0), {"r-a": 1}, SelectionConfig(), load_cap=3)
    assert [c.robot_id for c in ranked] == ["r-b", "r-a"]
    assert ranked[0].score - ranked[1].score == pytest.approx(0.1 / 3)
    full = rank_candidates(twins, Point(0, 0), {"r-a": 3}, SelectionConfig(), load_cap=3)
    assert [c.robot_id for c in full] == ["r-b"]  # at the cap: not a candidate
    avoided = rank_candidates(twins, Point(0, 0), {}, SelectionConfig(), load_cap=3, avoid="r-a")
    assert [c.robot_id for c in avoided] == ["r-b"]
    alone = rank_candidates(twins[1:], Point(0, 0), {}, SelectionConfig(), load_cap=3, avoid="r-a")
    assert [c.robot_id for c in alone] == ["r-a"]  # avoided only when someone else can go


def test_a_robot_on_another_floor_counts_as_the_farthest() -> None:
    robots = _records(
        robot("r-up", battery=80, floor="F2"), robot("r-near", battery=80, x=4, floor="F1")
    )
    ranked = rank_candidates(robots, Point(0, 0, 0, "F1"), {}, SelectionConfig(), load_cap=3)
    assert [(c.robot_id, c.distance, c.distance_norm) for c in ranked] == [
        ("r-near", 4.0, 1.0),
        ("r-up", None, 1.0),
    ]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"weights": {"battery": -0.1}}, "weights.battery"),
        ({"weights": {"battery": 0, "distance": 0, "load": 0}}, "weights"),
        ({"weights": {"speed": 1}}, "weights.speed"),
        ({"weights": {"battery": "high"}}, "weights.battery"),
        ({"weights": {"battery": True}}, "weights.battery"),
        ({"weights": [0.5, 0.5]}, "weights"),
        ({"min_battery": 101}, "min_battery"),
        ({"min_battery": float("nan")}, "min_battery"),
    ],
)
def test_invalid_selection_configs_are_refused(config: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidSelectionConfigError) as excinfo:
        SelectionConfig.from_mapping(config)
    assert excinfo.value.key == key


def test_a_partial_config_takes_defaults_for_the_rest() -> None:
    config = SelectionConfig.from_mapping({"min_battery": 40, "future_key": 1})
    assert config == SelectionConfig(0.6, 0.3, 0.1, 40.0)
    assert SelectionConfig.from_mapping(config.to_mapping()) == config


# -- task_create -> task.Task -----------------------------------------------------------------


def test_task_create_maps_to_task_as_protocol_7_1_says() -> None:
    event = task_event(
        "task-981",
        type="emergency",
        priority="high",
        sources=[{"area_id": "area-atrium", "x": 12.5, "y": 3, "z": 1.5, "floor": "F1"}],
        terminals=[
            {"area_id": "area-food", "x": 5, "y": 6, "floor": "F2"},
            {"area_id": "area-exit", "x": -1, "y": 0},
        ],
        metadata={"order": "A-17", "source.0.area_id": "overridden"},
        created_at="2026-11-27T10:06:00.900Z",
    )
    task = task_from_event(event, received_at=T0)
    assert task == task_pb2.Task(
        id="task-981",
        type=task_pb2.TASK_TYPE_EMERGENCY,
        priority=task_pb2.PRIORITY_HIGH,
        sources=[task_pb2.Location(x=12.5, y=3, z=1.5, floor="F1")],
        terminals=[
            task_pb2.Location(x=5, y=6, z=0, floor="F2"),
            task_pb2.Location(x=-1, y=0, z=0, floor=""),
        ],
        created_at=int(datetime(2026, 11, 27, 10, 6, tzinfo=UTC).timestamp()),
        entity_id=ENTITY,
        metadata={
            "order": "A-17",
            "source.0.area_id": "area-atrium",
            "terminal.0.area_id": "area-food",
            "terminal.1.area_id": "area-exit",
        },
    )


def test_unknown_type_and_missing_created_at() -> None:
    task = task_from_event(task_event("t-1", type="window_cleaning"), received_at=T0 + 0.7)
    assert task.type == task_pb2.TASK_TYPE_UNSPECIFIED
    assert task.priority == task_pb2.PRIORITY_NORMAL
    assert task.created_at == int(T0)


# -- the engine -------------------------------------------------------------------------------


async def test_task_create_is_idempotent_and_runs_the_hook_either_way(rig: Rig) -> None:
    cursors: list[str] = []

    def save_cursor(seq: int) -> Any:
        async def hook(conn: aiosqlite.Connection) -> None:
            await Database.set_state_in(conn, "events.cursor", str(seq))
            cursors.append(str(seq))

        return hook

    assert await rig.engine.create_from_event(task_event("t-1"), also=save_cursor(46)) is True
    assert await rig.engine.create_from_event(task_event("t-1"), also=save_cursor(47)) is False
    assert await rig.db.get_state("events.cursor") == "47"
    assert cursors == ["46", "47"]
    tasks = await rig.engine.tasks(ENTITY)
    assert [(t.task_id, t.state, t.attempts) for t in tasks] == [("t-1", TaskState.QUEUED, 0)]
    assert rig.engine.counts() == TaskCounts(pending=1, active=0)
    history = await rig.engine.history(ENTITY, "t-1")
    assert [h.change for h in history] == [TaskChange.QUEUED]


async def test_assignment_acceptance_and_completion(rig: Rig) -> None:
    await rig.fleet()
    assert await rig.engine.create_from_event(task_event("t-1"))
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    assert (record.state, record.robot_id, record.attempts) == (TaskState.ASSIGNED, "r-a", 1)
    assert rig.engine.counts() == TaskCounts(pending=0, active=1)

    # Naming the task while still IDLE is not acceptance: the robot has not started.
    await rig.registry.report(robot("r-a", battery=90, x=6, y=8, task="t-1"))
    assert (await task_of(rig, "t-1")).state is TaskState.ASSIGNED
    rig.clock.advance(3)
    await rig.registry.report(robot("r-a", battery=89, state=task_pb2.ROBOT_STATE_BUSY, task="t-1"))
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    assert (record.state, record.accepted_at) == (TaskState.ACCEPTED, T0 + 3)
    # BUSY with the task again: nothing new.
    await rig.registry.report(robot("r-a", battery=88, state=task_pb2.ROBOT_STATE_BUSY, task="t-1"))
    rig.clock.advance(60)  # long after the acceptance timeout: an accepted task stays
    await rig.engine.check_timeouts()
    rig.clock.advance(1)
    await rig.registry.report(robot("r-a", battery=80))  # idle, no current task: done
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    assert (record.state, record.robot_id, record.last_robot_id) == (
        TaskState.COMPLETED,
        None,
        "r-a",
    )
    assert rig.engine.counts() == TaskCounts(pending=0, active=0)

    assert await rig.engine.flush_reports() == 4
    assert [(r.status, r.robot_id) for r in rig.reporter.delivered] == [
        (TaskStatus.ASSIGNED, None),
        (TaskStatus.ASSIGNED, "r-a"),
        (TaskStatus.IN_PROGRESS, "r-a"),
        (TaskStatus.COMPLETED, "r-a"),
    ]
    assert rig.reporter.delivered[-1].progress_percent == 100
    assert rig.reporter.delivered[-1].at == datetime.fromtimestamp(T0 + 64, UTC)
    assert await rig.engine.pending_reports() == []


async def test_wire_status_mapping_covers_every_change() -> None:
    assert set(WIRE_STATUS) == set(TaskChange)
    assert WIRE_STATUS[TaskChange.ACCEPTED] is TaskStatus.IN_PROGRESS
    assert WIRE_STATUS[TaskChange.REQUEUED] is TaskStatus.ASSIGNED


async def test_not_accepted_in_time_goes_to_another_robot(rig: Rig) -> None:
    await rig.fleet()
    await rig.engine.create_from_event(task_event("t-1"))
    rig.clock.advance(29)
    await rig.engine.check_timeouts()
    assert (await task_of(rig, "t-1")).robot_id == "r-a"
    rig.clock.advance(1)
    await rig.engine.check_timeouts()
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    # r-a is still idle and still scores best, but a requeued task avoids its last robot.
    assert (record.state, record.robot_id, record.attempts) == (TaskState.ASSIGNED, "r-b", 2)
    history = await rig.engine.history(ENTITY, "t-1")
    assert [(h.change, h.robot_id, h.attempt) for h in history] == [
        (TaskChange.QUEUED, None, 0),
        (TaskChange.ASSIGNED, "r-a", 1),
        (TaskChange.REQUEUED, "r-a", 1),
        (TaskChange.ASSIGNED, "r-b", 2),
    ]
    assert history[2].reason == "not accepted by r-a within 30 s"


async def test_an_error_requeues_and_attempts_run_out(rig: Rig) -> None:
    await rig.reopen(max_attempts=2)
    await rig.registry.report(robot("r-a"))
    await rig.engine.create_from_event(task_event("t-1"))
    await rig.registry.report(robot("r-a", state=task_pb2.ROBOT_STATE_ERROR))
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    assert (record.state, record.last_reason) == (TaskState.QUEUED, "robot r-a is ERROR")
    await rig.registry.report(robot("r-a"))  # recovered, and the only robot: assigned again
    assert (await task_of(rig, "t-1")).attempts == 2
    await rig.registry.report(robot("r-a", state=task_pb2.ROBOT_STATE_OFFLINE))
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    assert (record.state, record.attempts) == (TaskState.FAILED, 2)
    await rig.registry.report(robot("r-a"))
    assert (await task_of(rig, "t-1")).state is TaskState.FAILED
    await rig.engine.flush_reports()
    last = rig.reporter.delivered[-1]
    assert (last.status, last.robot_id) == (TaskStatus.FAILED, "r-a")
    assert last.message == "failed after 2 attempt(s): robot r-a is OFFLINE"


async def test_emergency_then_priority_then_arrival(rig: Rig) -> None:
    await rig.reopen(load_cap=1)
    await rig.engine.create_from_event(task_event("t-low", priority="low"))
    await rig.engine.create_from_event(task_event("t-urgent", priority="urgent"))
    await rig.engine.create_from_event(task_event("t-urgent-2", priority="urgent"))
    await rig.engine.create_from_event(task_event("t-emergency", type="emergency", priority="low"))
    assert rig.engine.counts() == TaskCounts(pending=4, active=0)
    order: list[str] = []
    for name in ("r-1", "r-2", "r-3", "r-4"):
        await rig.registry.report(robot(name))
        (assigned,) = [t for t in await rig.engine.tasks(ENTITY) if t.robot_id == name]
        order.append(assigned.task_id)
    assert order == ["t-emergency", "t-urgent", "t-urgent-2", "t-low"]


async def test_stacked_assignments_wait_while_the_robot_works(rig: Rig) -> None:
    await rig.registry.report(robot("r-a"))
    await rig.engine.create_from_event(task_event("t-1"))
    await rig.engine.create_from_event(task_event("t-2"))  # r-a, still idle, load 1 of 3
    assert [t.robot_id for t in await rig.engine.tasks(ENTITY)] == ["r-a", "r-a"]
    await rig.registry.report(robot("r-a", state=task_pb2.ROBOT_STATE_BUSY, task="t-1"))
    rig.clock.advance(100)
    await rig.engine.check_timeouts()  # t-2 does not time out while r-a works on t-1
    assert (await task_of(rig, "t-2")).state is TaskState.ASSIGNED
    await rig.registry.report(robot("r-a", state=task_pb2.ROBOT_STATE_BUSY, task="t-2"))
    states = {t.task_id: t.state for t in await rig.engine.tasks(ENTITY)}
    assert states == {"t-1": TaskState.COMPLETED, "t-2": TaskState.ACCEPTED}


async def test_restart_keeps_the_queue_and_the_config(rig: Rig) -> None:
    await rig.registry.report(robot("r-a"))
    await rig.engine.create_from_event(task_event("t-1"))
    await rig.engine.create_from_event(task_event("t-2"))
    await rig.engine.create_from_event(task_event("t-3"))
    await rig.engine.create_from_event(task_event("t-4"))  # r-a is at its cap of 3
    weights = {"weights": {"battery": 0.1, "distance": 0.9, "load": 0}, "min_battery": 50}
    assert await rig.engine.apply_config(weights, 47)

    await rig.reopen()
    states = [(t.task_id, t.state, t.robot_id) for t in await rig.engine.tasks(ENTITY)]
    assert states == [
        ("t-1", TaskState.ASSIGNED, "r-a"),
        ("t-2", TaskState.ASSIGNED, "r-a"),
        ("t-3", TaskState.ASSIGNED, "r-a"),
        ("t-4", TaskState.QUEUED, None),
    ]
    assert rig.engine.counts() == TaskCounts(pending=1, active=3)
    assert rig.engine.config_version == 47
    assert rig.engine.selection == SelectionConfig(0.1, 0.9, 0.0, 50.0)
    assert await rig.engine.apply_config({}, 46) is False
    assert await rig.engine.create_from_event(task_event("t-2")) is False
    assert len(await rig.engine.tasks(ENTITY)) == 4

    # r-a is never heard from again: once offline_after has passed since the start, its
    # tasks go back to the queue.
    rig.clock.advance(29)
    await rig.engine.check_timeouts()
    assert rig.engine.counts() == TaskCounts(pending=1, active=3)
    rig.clock.advance(1)
    await rig.engine.check_timeouts()
    assert rig.engine.counts() == TaskCounts(pending=4, active=0)
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    assert record.last_reason == "robot r-a not heard from"


async def test_config_versions_and_invalid_configs(rig: Rig) -> None:
    with pytest.raises(InvalidSelectionConfigError):
        await rig.engine.apply_config({"weights": {"battery": -1}}, 5)
    with pytest.raises(ValueError, match="version"):
        await rig.engine.apply_config({}, -1)
    assert rig.engine.config_version is None
    assert rig.engine.selection == SelectionConfig()
    assert await rig.engine.apply_config({"min_battery": 60}, 5)
    assert await rig.engine.apply_config({"min_battery": 70}, 5) is False
    assert await rig.engine.apply_config({"min_battery": 70}, 4) is False
    assert rig.engine.selection.min_battery == 60
    async with rig.db.reader.execute("SELECT version FROM task_config") as cursor:
        assert [tuple(r) for r in await cursor.fetchall()] == [(5,)]


async def test_a_config_that_lowers_min_battery_assigns_waiting_tasks(rig: Rig) -> None:
    await rig.registry.report(robot("r-low", battery=20))
    await rig.engine.create_from_event(task_event("t-1"))
    assert (await task_of(rig, "t-1")).state is TaskState.QUEUED
    assert await rig.engine.apply_config({"min_battery": 15}, 1)
    assert (await task_of(rig, "t-1")).robot_id == "r-low"


async def test_failed_reports_stay_in_the_outbox_and_go_later_in_order(rig: Rig) -> None:
    rig.reporter.down = True
    await rig.registry.report(robot("r-a"))
    await rig.engine.create_from_event(task_event("t-1"))
    await rig.engine.create_from_event(task_event("t-2"))
    assert await rig.engine.flush_reports() == 0
    assert rig.reporter.calls == 1  # stops at the first failure
    kept = await rig.engine.pending_reports()
    expected = [
        ("t-1", TaskStatus.ASSIGNED, None),
        ("t-1", TaskStatus.ASSIGNED, "r-a"),
        ("t-2", TaskStatus.ASSIGNED, None),
        ("t-2", TaskStatus.ASSIGNED, "r-a"),
    ]
    assert [(r.task_id, r.status, r.robot_id) for r in kept] == expected
    async with rig.db.reader.execute("SELECT attempts, last_error FROM task_outbox") as cursor:
        rows = [tuple(r) for r in await cursor.fetchall()]
    assert rows[0] == (1, "ConnectionError('server unreachable')")
    assert rows[1:] == [(0, None)] * 3

    await rig.reopen()  # the outbox survives a restart too
    rig.reporter.down = False
    assert await rig.engine.flush_reports() == 4
    assert [(r.task_id, r.status, r.robot_id) for r in rig.reporter.delivered] == expected
    assert await rig.engine.pending_reports() == []
    assert await rig.engine.flush_reports() == 0


async def test_a_failure_midway_keeps_the_rest_in_order(rig: Rig) -> None:
    await rig.engine.create_from_event(task_event("t-1"))
    await rig.engine.create_from_event(task_event("t-2"))
    await rig.engine.create_from_event(task_event("t-3"))

    class FailsOnSecond(Reporter):
        async def report_task(self, report: TaskStatusReport) -> None:
            self.down = self.calls == 1
            await super().report_task(report)

    rig.engine.reporter = flaky = FailsOnSecond()
    assert await rig.engine.flush_reports() == 1
    assert [r.task_id for r in flaky.delivered] == ["t-1"]
    assert [r.task_id for r in await rig.engine.pending_reports()] == ["t-2", "t-3"]
    assert await rig.engine.flush_reports() == 2
    assert [r.task_id for r in flaky.delivered] == ["t-1", "t-2", "t-3"]


async def test_finished_tasks_are_pruned_after_the_retention(rig: Rig) -> None:
    await rig.reopen(retention=3600)
    await rig.registry.report(robot("r-a"))
    await rig.engine.create_from_event(task_event("t-1"))
    await rig.registry.report(robot("r-a", state=task_pb2.ROBOT_STATE_BUSY, task="t-1"))
    await rig.registry.report(robot("r-a"))
    assert await rig.engine.prune() == 0
    rig.clock.advance(3601)
    assert await rig.engine.prune() == 1
    assert await rig.engine.tasks(ENTITY) == []
    assert await rig.engine.history(ENTITY, "t-1") == []


async def test_the_robot_sweep_requeues_through_the_engine(rig: Rig) -> None:
    await rig.fleet()
    await rig.engine.create_from_event(task_event("t-1"))  # -> r-a
    rig.clock.advance(25)
    await rig.registry.report(robot("r-b", battery=60))
    rig.clock.advance(5)  # r-a silent 30 s; r-b 5 s; the others 30 s too
    offline = await rig.registry.sweep()
    assert "r-a" in {r.robot_id for r in offline}
    record = await rig.engine.get(ENTITY, "t-1")
    assert record is not None
    assert (record.robot_id, record.attempts) == ("r-b", 2)
    assert record.last_reason == "robot r-a is OFFLINE"


# -- the per-tower queue ----------------------------------------------------------------------


async def next_within(stream: AssignmentStream) -> task_pb2.TaskAssignment:
    return await asyncio.wait_for(stream.next(), 5.0)


def _assignment(task_id: str) -> task_pb2.TaskAssignment:
    return task_pb2.TaskAssignment(robot_id="r-a", task=task_pb2.Task(id=task_id))


async def test_stream_sends_the_snapshot_then_live_and_overflows_past_its_bound() -> None:
    stream = AssignmentStream(ENTITY, [_assignment(f"s-{i}") for i in range(5)], limit=2)
    stream.offer(_assignment("live-1"))
    stream.offer(_assignment("live-2"))
    got = [(await next_within(stream)).task.id for _ in range(7)]
    assert got == ["s-0", "s-1", "s-2", "s-3", "s-4", "live-1", "live-2"]
    for n in range(3):
        stream.offer(_assignment(f"more-{n}"))
    with pytest.raises(AssignmentStreamOverflowError) as excinfo:
        await next_within(stream)
    assert excinfo.value.limit == 2


async def test_stream_close_ends_a_waiting_reader() -> None:
    stream = AssignmentStream(ENTITY, [], limit=2)
    waiting = asyncio.ensure_future(next_within(stream))
    await asyncio.sleep(0)  # the reader is now waiting for an assignment
    assert not waiting.done()
    stream.close()
    with pytest.raises(AssignmentStreamClosedError):
        await waiting


# -- the periodic tasks -----------------------------------------------------------------------


async def eventually(condition: Any, *, attempts: int = 500) -> None:
    """Poll ``condition`` (an async callable) at most ``attempts`` times, 10 ms apart."""
    for _ in range(attempts):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_the_engine_maintenance_loop_sweeps_requeues_and_reports(rig: Rig) -> None:
    await rig.registry.report(robot("r-a", battery=90))
    await rig.registry.report(robot("r-b", battery=60))
    await rig.engine.create_from_event(task_event("t-1"))  # -> r-a
    rig.clock.advance(30)
    await rig.registry.report(robot("r-b", battery=60))  # r-a is silent for 30 s
    loop = asyncio.ensure_future(rig.engine.run(interval=0.01))
    try:

        async def moved_and_reported() -> bool:
            record = await rig.engine.get(ENTITY, "t-1")
            return (
                record is not None
                and record.robot_id == "r-b"
                and len(rig.reporter.delivered) == 4
                and not await rig.engine.pending_reports()
            )

        await eventually(moved_and_reported)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert [(r.status, r.robot_id) for r in rig.reporter.delivered] == [
        (TaskStatus.ASSIGNED, None),
        (TaskStatus.ASSIGNED, "r-a"),
        (TaskStatus.ASSIGNED, None),
        (TaskStatus.ASSIGNED, "r-b"),
    ]


async def test_the_registry_sweeper_runs_until_cancelled() -> None:
    clock = Clock()
    registry = RobotRegistry(clock=clock)
    await registry.report(robot("r-a"))
    clock.advance(30)
    sweeper = asyncio.ensure_future(registry.run_sweeper(interval=0.01))
    try:

        async def offline() -> bool:
            record = registry.get(ENTITY, "r-a")
            return record is not None and record.state is RobotState.OFFLINE

        await eventually(offline)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

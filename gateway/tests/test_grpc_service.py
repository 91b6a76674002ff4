"""task.OrchestratorService on the gateway's real gRPC server (127.0.0.1, ephemeral port), driven
by the generated client stub and by raw bytes, as the Go tower would send them."""

# grpc_tools writes no .pyi for *_pb2_grpc modules: the stub and raw channel calls are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from navign_gateway.db import Database
from navign_gateway.grpc_service import (
    GrpcServer,
    GrpcServerError,
    OrchestratorServicer,
    start_grpc_server,
    stop_grpc_server,
)
from navign_gateway.robots import RobotRegistry, RobotState
from navign_gateway.tasks import TaskEngine, TaskState
from navign_proto.grpc import task_pb2, task_pb2_grpc
from navign_proto.testing import OWN_SUBCHANNELS
from navign_proto.wire import TaskCreateEvent, TaskStatus

from .conftest import ENTITY, T0, Clock, Reporter, wait_until

CALL_TIMEOUT_S = 5.0
StreamCall = Any  # grpc.aio.UnaryStreamCall, untyped through the generated stub


@dataclass
class Served:
    clock: Clock
    reporter: Reporter
    registry: RobotRegistry
    engine: TaskEngine
    servicer: OrchestratorServicer
    server: GrpcServer
    port: int
    channel: grpc.aio.Channel

    @property
    def stub(self) -> task_pb2_grpc.OrchestratorServiceStub:
        return task_pb2_grpc.OrchestratorServiceStub(self.channel)

    async def report(self, info: task_pb2.RobotInfo) -> task_pb2.RobotReportResponse:
        request = task_pb2.RobotReportRequest(robot=info)
        response: task_pb2.RobotReportResponse = await self.stub.ReportRobotStatus(
            request, timeout=CALL_TIMEOUT_S
        )
        return response

    async def tower(self, entity_id: str = ENTITY) -> StreamCall:
        """Open a GetTaskAssignment stream and wait until the gateway has registered it."""
        before = self.engine.stream_count(entity_id)
        call = self.stub.GetTaskAssignment(
            task_pb2.RobotDistributionRequest(entity_id=entity_id), timeout=30
        )
        await wait_until(lambda: self.engine.stream_count(entity_id) > before)
        return call

    async def fleet(self) -> None:
        """Around a task at (0, 0): r-a 90 % at distance 10, r-b 60 % at 0, r-c 100 % at 20,
        r-d charging, r-e 20 % (below min_battery). Default scores: r-a 0.79, r-b 0.76,
        r-c 0.70."""
        await self.report(robot("r-a", battery=90, x=6, y=8))
        await self.report(robot("r-b", battery=60))
        await self.report(robot("r-c", battery=100, x=12, y=16))
        await self.report(robot("r-d", battery=100, state=task_pb2.ROBOT_STATE_CHARGING))
        await self.report(robot("r-e", battery=20))


async def next_assignment(call: StreamCall) -> task_pb2.TaskAssignment:
    message = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
    assert isinstance(message, task_pb2.TaskAssignment), message
    return message


def robot(
    robot_id: str,
    *,
    state: int = task_pb2.ROBOT_STATE_IDLE,
    battery: float = 80.0,
    x: float = 0.0,
    y: float = 0.0,
    task: str = "",
    entity: str = ENTITY,
) -> task_pb2.RobotInfo:
    return task_pb2.RobotInfo(
        id=robot_id,
        state=state,  # type: ignore[arg-type]
        current_location=task_pb2.Location(x=x, y=y),
        battery_level=battery,
        current_task_id=task,
        entity_id=entity,
    )


def task_event(task_id: str, entity: str = ENTITY, **overrides: Any) -> TaskCreateEvent:
    payload: dict[str, Any] = {
        "task_id": task_id,
        "type": "delivery",
        "entity_id": entity,
        "sources": [{"area_id": "area-atrium", "x": 0, "y": 0}],
        "terminals": [{"area_id": "area-food", "x": 5, "y": 6, "floor": "F2"}],
    }
    payload.update(overrides)
    return TaskCreateEvent.model_validate(payload)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **engine_options: Any) -> AsyncIterator[Served]:
    clock = Clock()
    reporter = Reporter()
    db = Database(tmp_path / "gateway.sqlite3")
    await db.open()
    registry = RobotRegistry(clock=clock)
    engine = TaskEngine(db, registry, reporter, **engine_options)
    await engine.migrate()
    servicer = OrchestratorServicer(registry, engine)
    server, port = await start_grpc_server("127.0.0.1:0", [servicer.register])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[OWN_SUBCHANNELS])
    try:
        yield Served(clock, reporter, registry, engine, servicer, server, port, channel)
    finally:
        await channel.close(None)
        await stop_grpc_server(server, None, end_streams=[servicer.end_streams])
        await db.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as the_served:
        yield the_served


# -- assignments -------------------------------------------------------------------------------


async def test_the_tower_receives_the_assignment_to_the_best_robot(served: Served) -> None:
    await served.fleet()
    tower = await served.tower()
    assert await served.engine.create_from_event(task_event("t-1", metadata={"order": "A-17"}))
    assignment = await next_assignment(tower)
    assert assignment.robot_id == "r-a"  # 0.79 > r-b 0.76 > r-c 0.70; r-d, r-e not eligible
    assert assignment.task.id == "t-1"
    assert assignment.task.type == task_pb2.TASK_TYPE_DELIVERY
    assert assignment.task.priority == task_pb2.PRIORITY_NORMAL
    assert dict(assignment.task.metadata) == {
        "order": "A-17",
        "source.0.area_id": "area-atrium",
        "terminal.0.area_id": "area-food",
    }
    assert assignment.task.terminals[0] == task_pb2.Location(x=5, y=6, floor="F2")
    # A second task: r-a now carries one unfinished task (load 1 of 3), and
    # 0.54 + 0.15 + 0.1 * 2/3 = 0.7567 < r-b's 0.76.
    await served.engine.create_from_event(task_event("t-2"))
    second = await next_assignment(tower)
    assert (second.robot_id, second.task.id) == ("r-b", "t-2")
    tower.cancel()


async def test_every_tower_of_the_entity_gets_every_assignment(served: Served) -> None:
    await served.fleet()
    await served.report(robot("r-x", entity="mall-2"))
    first = await served.tower()
    second = await served.tower()
    other = await served.tower("mall-2")
    assert served.engine.stream_count(ENTITY) == 2
    await served.engine.create_from_event(task_event("t-1"))
    for tower in (first, second):
        assignment = await next_assignment(tower)
        assert (assignment.robot_id, assignment.task.id) == ("r-a", "t-1")
    await served.engine.create_from_event(task_event("t-9", entity="mall-2"))
    assignment = await next_assignment(other)  # mall-1's assignment never reached it
    assert (assignment.robot_id, assignment.task.id) == ("r-x", "t-9")
    for tower in (first, second, other):
        tower.cancel()
    await wait_until(lambda: served.engine.stream_count(ENTITY) == 0)


async def test_a_late_tower_gets_the_outstanding_assignments_first(served: Served) -> None:
    await served.fleet()
    await served.engine.create_from_event(task_event("t-1"))  # -> r-a
    await served.engine.create_from_event(task_event("t-2"))  # -> r-b (see above)
    # t-3: r-a 0.7567, r-b 0.36 + 0.3 + 0.0667 = 0.7267, r-c 0.70 -> r-a.
    await served.engine.create_from_event(task_event("t-3"))
    await served.report(robot("r-b", battery=60, state=task_pb2.ROBOT_STATE_BUSY, task="t-2"))
    tower = await served.tower()
    await served.engine.create_from_event(task_event("t-4"))
    received = [await next_assignment(tower) for _ in range(3)]
    # t-2 was accepted (r-b is busy with it): no longer outstanding. Then the live t-4:
    # r-a load 2: 0.54 + 0.15 + 0.0333 = 0.7233 > r-c 0.70.
    assert [(a.robot_id, a.task.id) for a in received] == [
        ("r-a", "t-1"),
        ("r-a", "t-3"),
        ("r-a", "t-4"),
    ]
    tower.cancel()


async def test_an_offline_robot_loses_its_task_to_another(served: Served) -> None:
    await served.fleet()
    tower = await served.tower()
    await served.engine.create_from_event(task_event("t-1"))
    assert (await next_assignment(tower)).robot_id == "r-a"
    served.clock.advance(25)
    await served.report(robot("r-b", battery=60))
    served.clock.advance(5)  # r-a (and r-c, r-d, r-e) silent for 30 s
    await served.registry.sweep()
    robot_a = served.registry.get(ENTITY, "r-a")
    assert robot_a is not None
    assert robot_a.state is RobotState.OFFLINE
    again = await next_assignment(tower)
    assert (again.robot_id, again.task.id) == ("r-b", "t-1")
    record = await served.engine.get(ENTITY, "t-1")
    assert record is not None
    assert (record.attempts, record.last_reason) == (2, "robot r-a is OFFLINE")
    tower.cancel()


async def test_an_assignment_not_accepted_in_time_is_requeued(served: Served) -> None:
    await served.fleet()
    tower = await served.tower()
    await served.engine.create_from_event(task_event("t-1"))
    assert (await next_assignment(tower)).robot_id == "r-a"
    served.clock.advance(30)
    await served.engine.check_timeouts()
    again = await next_assignment(tower)
    assert (again.robot_id, again.task.id) == ("r-b", "t-1")  # r-a is avoided this time
    await served.engine.flush_reports()
    assert [(r.status, r.robot_id) for r in served.reporter.delivered] == [
        (TaskStatus.ASSIGNED, None),
        (TaskStatus.ASSIGNED, "r-a"),
        (TaskStatus.ASSIGNED, None),
        (TaskStatus.ASSIGNED, "r-b"),
    ]
    assert served.reporter.delivered[2].message == (
        "requeued after attempt 1 of 5: not accepted by r-a within 30 s"
    )
    tower.cancel()


async def test_completion_is_reported(served: Served) -> None:
    await served.fleet()
    await served.engine.create_from_event(task_event("t-1"))
    busy = robot("r-a", battery=85, state=task_pb2.ROBOT_STATE_BUSY, task="t-1")
    response = await served.report(busy)
    assert response == task_pb2.RobotReportResponse(success=True, message="status of r-a stored")
    served.clock.advance(120)
    await served.report(robot("r-a", battery=70, x=5, y=6))
    await served.engine.flush_reports()
    assert [(r.task_id, r.status, r.robot_id) for r in served.reporter.delivered] == [
        ("t-1", TaskStatus.ASSIGNED, None),
        ("t-1", TaskStatus.ASSIGNED, "r-a"),
        ("t-1", TaskStatus.IN_PROGRESS, "r-a"),
        ("t-1", TaskStatus.COMPLETED, "r-a"),
    ]
    record = await served.engine.get(ENTITY, "t-1")
    assert record is not None
    assert record.state is TaskState.COMPLETED


async def test_a_config_update_changes_the_choice_and_older_versions_are_ignored(
    served: Served,
) -> None:
    await served.fleet()
    tower = await served.tower()
    distance_first = {"weights": {"battery": 0.2, "distance": 0.8, "load": 0}}
    assert await served.engine.apply_config(distance_first, 10)
    await served.engine.create_from_event(task_event("t-1"))
    # r-b: 0.12 + 0.8 = 0.92; r-a: 0.18 + 0.4 = 0.58; r-c: 0.2
    assert (await next_assignment(tower)).robot_id == "r-b"
    battery_only = {"weights": {"battery": 1, "distance": 0, "load": 0}}
    assert await served.engine.apply_config(battery_only, 9) is False
    await served.engine.create_from_event(task_event("t-2"))
    assert (await next_assignment(tower)).robot_id == "r-b"  # still version 10
    assert await served.engine.apply_config(battery_only, 11)
    await served.engine.create_from_event(task_event("t-3"))
    assert (await next_assignment(tower)).robot_id == "r-c"  # 100 % battery
    tower.cancel()


async def test_a_replayed_task_create_is_a_no_op(served: Served) -> None:
    await served.fleet()
    tower = await served.tower()
    assert await served.engine.create_from_event(task_event("t-1"))
    assert await served.engine.create_from_event(task_event("t-1")) is False
    await served.engine.create_from_event(task_event("t-2"))
    received = [(await next_assignment(tower)).task.id for _ in range(2)]
    assert received == ["t-1", "t-2"]  # t-1 once, not twice
    tower.cancel()


async def test_a_tower_that_falls_behind_is_disconnected(tmp_path: Path) -> None:
    async with serving(tmp_path, stream_queue_size=2) as served:
        await served.report(robot("r-a", state=task_pb2.ROBOT_STATE_CHARGING))
        for name in ("t-1", "t-2", "t-3"):
            await served.engine.create_from_event(task_event(name))
        tower = await served.tower()
        await served.report(robot("r-a"))  # idle: three assignments at once, queue of two
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await asyncio.wait_for(tower.read(), CALL_TIMEOUT_S)
        assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The gateway forgets the dropped stream on its own time (a loaded machine is slow to):
        # only then does a new stream count as the tower reconnecting.
        await wait_until(lambda: served.engine.stream_count(ENTITY) == 0)
        # Reconnecting gives the outstanding ones (the snapshot is not bounded by the queue).
        again = await served.tower()
        received = [(await next_assignment(again)).task.id for _ in range(3)]
        assert received == ["t-1", "t-2", "t-3"]
        again.cancel()


async def test_stopping_ends_open_streams_with_ok(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        tower = await served.tower()
        await stop_grpc_server(served.server, 5.0, end_streams=[served.servicer.end_streams])
        async with asyncio.timeout(CALL_TIMEOUT_S):
            assert [message async for message in tower] == []
        assert await tower.code() == grpc.StatusCode.OK


async def test_a_port_in_use_is_an_error(served: Served) -> None:
    with pytest.raises(GrpcServerError, match=str(served.port)):
        await start_grpc_server(f"127.0.0.1:{served.port}", [served.servicer.register])


# -- invalid input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_message", "detail"),
    [
        pytest.param(task_pb2.RobotReportRequest(), "robot: required", id="no-robot"),
        pytest.param(
            task_pb2.RobotReportRequest(robot=robot("r-a", battery=150)),
            "robot.battery_level",
            id="battery>100",
        ),
        pytest.param(
            task_pb2.RobotReportRequest(robot=robot("r-a", battery=-1)),
            "robot.battery_level",
            id="battery<0",
        ),
        pytest.param(task_pb2.RobotReportRequest(robot=robot("")), "robot.id", id="empty-robot-id"),
        pytest.param(
            task_pb2.RobotReportRequest(robot=robot("r-a", entity="")),
            "robot.entity_id",
            id="empty-entity",
        ),
        pytest.param(
            task_pb2.RobotReportRequest(robot=robot("r-a", state=42)),
            "robot.state",
            id="unknown-state",
        ),
    ],
)
async def test_invalid_reports_are_invalid_argument_and_change_nothing(
    served: Served, request_message: task_pb2.RobotReportRequest, detail: str
) -> None:
    await served.report(robot("r-a", battery=55))
    before = served.registry.robots(ENTITY)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await served.stub.ReportRobotStatus(request_message, timeout=CALL_TIMEOUT_S)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (excinfo.value.details() or "")
    assert served.registry.robots(ENTITY) == before
    assert served.registry.robots("") == []


async def test_a_stream_for_an_invalid_entity_is_invalid_argument(served: Served) -> None:
    call = served.stub.GetTaskAssignment(
        task_pb2.RobotDistributionRequest(entity_id=""), timeout=CALL_TIMEOUT_S
    )
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await call.read()
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- the wire, read by hand --------------------------------------------------------------------

VARINT, FIXED64, LENGTH_DELIMITED = 0, 1, 2


def encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def str_field(number: int, value: str) -> bytes:
    raw = value.encode()
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(raw)) + raw


def bytes_field(number: int, raw: bytes) -> bytes:
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(raw)) + raw


def double_field(number: int, value: float) -> bytes:
    return encode_varint(number << 3 | FIXED64) + struct.pack("<d", value)


def int_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3 | VARINT) + encode_varint(value)


def decode_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
    raise ValueError("varint longer than 10 bytes")


def decode_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) in wire order; the protobuf encoding rules, by hand."""
    fields: list[tuple[int, int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = decode_varint(data, at)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, at = decode_varint(data, at)
        elif wire_type == FIXED64:
            value, at = data[at : at + 8], at + 8
        elif wire_type == LENGTH_DELIMITED:
            length, at = decode_varint(data, at)
            value, at = data[at : at + length], at + length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def as_bytes(value: int | bytes) -> bytes:
    assert isinstance(value, bytes)
    return value


def decode_location(data: bytes) -> dict[int, object]:
    out: dict[int, object] = {}
    for number, wire_type, value in decode_fields(data):
        if number in (1, 2, 3):
            assert wire_type == FIXED64
            out[number] = struct.unpack("<d", as_bytes(value))[0]
        else:
            assert (number, wire_type) == (4, LENGTH_DELIMITED)
            out[number] = as_bytes(value).decode()
    return out


async def test_assignment_bytes_decode_by_hand_with_the_fixed_field_numbers(
    served: Served,
) -> None:
    await served.fleet()
    raw_stream = served.channel.unary_stream(
        "/task.OrchestratorService/GetTaskAssignment",
        request_serializer=None,
        response_deserializer=None,
    )
    call = raw_stream(str_field(1, ENTITY), timeout=30)
    await wait_until(lambda: served.engine.stream_count(ENTITY) == 1)
    await served.engine.create_from_event(
        task_event(
            "t-1",
            type="patrol",
            priority="urgent",
            sources=[{"area_id": "area-atrium", "x": 1.5, "y": -2.25, "z": 0.5, "floor": "F1"}],
            metadata={"order": "A-17"},
            created_at="2026-01-01T00:00:00Z",
        )
    )
    raw = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
    assert isinstance(raw, bytes)
    assignment = decode_fields(raw)
    assert [(n, w) for n, w, _ in assignment] == [(1, LENGTH_DELIMITED), (2, LENGTH_DELIMITED)]
    # Source (1.5, -2.25, 0.5): distances r-a 11.21, r-b 2.75, r-c 21.06 (the largest);
    # r-a 0.54 + 0.3 * (1 - 11.21/21.06) + 0.1 = 0.780 > r-b 0.721 > r-c 0.700.
    assert assignment[0][2] == b"r-a"
    task: dict[int, list[int | bytes]] = {}
    for number, wire_type, value in decode_fields(as_bytes(assignment[1][2])):
        expected_type = VARINT if number in (2, 5, 6) else LENGTH_DELIMITED
        assert wire_type == expected_type, number
        task.setdefault(number, []).append(value)
    assert sorted(task) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert task[1] == [b"t-1"]
    assert task[2] == [2]  # TASK_TYPE_PATROL
    assert task[5] == [4]  # PRIORITY_URGENT
    assert task[6] == [1_767_225_600]  # 2026-01-01T00:00:00Z
    assert task[7] == [ENTITY.encode()]
    assert [decode_location(as_bytes(v)) for v in task[3]] == [{1: 1.5, 2: -2.25, 3: 0.5, 4: "F1"}]
    assert [decode_location(as_bytes(v)) for v in task[4]] == [{1: 5.0, 2: 6.0, 4: "F2"}]
    entries = {}
    for entry in task[8]:
        (k_num, _, k), (v_num, _, v) = decode_fields(as_bytes(entry))
        assert (k_num, v_num) == (1, 2)
        entries[as_bytes(k).decode()] = as_bytes(v).decode()
    assert entries == {
        "order": "A-17",
        "source.0.area_id": "area-atrium",
        "terminal.0.area_id": "area-food",
    }
    call.cancel()


async def test_a_hand_encoded_report_from_a_foreign_tower(served: Served) -> None:
    location = double_field(1, 6.0) + double_field(2, 8.0) + str_field(4, "F1")
    info = (
        str_field(1, "r-go")
        + str_field(2, "Porter")
        + int_field(3, 2)  # ROBOT_STATE_BUSY
        + bytes_field(4, location)
        + double_field(5, 87.5)
        + str_field(6, "t-7")
        + int_field(7, 1 << 40)
        + str_field(8, ENTITY)
    )
    call = served.channel.unary_unary(
        "/task.OrchestratorService/ReportRobotStatus",
        request_serializer=None,
        response_deserializer=None,
    )
    raw = await call(bytes_field(1, info), timeout=CALL_TIMEOUT_S)
    assert raw == int_field(1, 1) + str_field(2, "status of r-go stored")
    record = served.registry.get(ENTITY, "r-go")
    assert record is not None
    assert (record.name, record.state, record.battery, record.current_task_id) == (
        "Porter",
        RobotState.BUSY,
        87.5,
        "t-7",
    )
    assert (record.reported_last_seen, record.last_seen) == (1 << 40, T0)

"""The gRPC part of navign-proto: drift, wire compatibility and real loopback round trips."""

# grpc_tools writes no .pyi for *_pb2_grpc modules, so their stubs, servicers and
# add_*_to_server functions are untyped; calling them is the only untyped call here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from navign_proto.grpc import task_pb2, task_pb2_grpc
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from navign_proto.testing import OWN_SUBCHANNELS

PROTO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = PROTO_ROOT / "scripts" / "generate_grpc.py"
CALL_TIMEOUT_S = 5.0
TOKEN = "test-operator-token"

# ------------------------------------------------------------------ drift


@pytest.fixture(scope="module")
def generate_grpc() -> Iterator[ModuleType]:
    """proto/scripts/generate_grpc.py, loaded from its file (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("navign_generate_grpc", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _drifted(script: ModuleType, package_dir: Path, protos_dir: Path) -> dict[str, list[str]]:
    drift = script.find_drift(package_dir, protos_dir)
    return {
        "changed": list(drift.changed),
        "missing": list(drift.missing),
        "stale": list(drift.stale),
    }


def test_committed_stubs_match_protos(generate_grpc: ModuleType) -> None:
    drift = generate_grpc.find_drift()
    assert not drift, drift.describe()


def test_check_mode_exit_code(
    generate_grpc: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate_grpc.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_drift_is_detected_and_repaired(generate_grpc: ModuleType, tmp_path: Path) -> None:
    package = tmp_path / "grpc"
    shutil.copytree(
        generate_grpc.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    (package / "task_pb2.py").write_text("# edited by hand\n")
    (package / "task_pb2_grpc.py").unlink()
    (package / "old_pb2.py").write_text("# left over from a removed .proto\n")

    assert _drifted(generate_grpc, package, generate_grpc.PROTOS_DIR) == {
        "changed": ["task_pb2.py"],
        "missing": ["task_pb2_grpc.py"],
        "stale": ["old_pb2.py"],
    }
    generate_grpc.write(package, generate_grpc.PROTOS_DIR)
    assert not generate_grpc.find_drift(package, generate_grpc.PROTOS_DIR)


def test_proto_edit_without_regeneration_is_drift(
    generate_grpc: ModuleType, tmp_path: Path
) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(generate_grpc.PROTOS_DIR, protos)
    source = protos / "task.proto"
    text = source.read_text()
    assert "double battery_level = 5;" in text
    source.write_text(text.replace("double battery_level = 5;", "double battery_level = 9;"))

    drift = _drifted(generate_grpc, generate_grpc.PACKAGE_DIR, protos)
    assert drift["changed"] == ["task_pb2.py"]
    assert drift["missing"] == drift["stale"] == []


def test_generation_is_deterministic(generate_grpc: ModuleType) -> None:
    assert generate_grpc.render() == generate_grpc.render()


# ------------------------------------------------ protobuf encoding, by hand

VARINT, FIXED64, LENGTH_DELIMITED = 0, 1, 2


def varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values are sent as their 64-bit two's complement."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(field_number: int, wire_type: int) -> bytes:
    return varint(field_number << 3 | wire_type)


def int_field(field_number: int, value: int) -> bytes:
    return key(field_number, VARINT) + varint(value)


def double_field(field_number: int, value: float) -> bytes:
    return key(field_number, FIXED64) + struct.pack("<d", value)


def bytes_field(field_number: int, value: bytes) -> bytes:
    return key(field_number, LENGTH_DELIMITED) + varint(len(value)) + value


def str_field(field_number: int, value: str) -> bytes:
    return bytes_field(field_number, value.encode())


def map_entry(field_number: int, map_key: str, map_value: str) -> bytes:
    return bytes_field(field_number, str_field(1, map_key) + str_field(2, map_value))


def test_varint_helper_matches_the_spec_examples() -> None:
    assert varint(1) == b"\x01"
    assert varint(150) == b"\x96\x01"
    assert varint(-1) == b"\xff" * 9 + b"\x01"


# ----------------------------------------------- task.* wire compatibility

LOC_A_BYTES = (
    double_field(1, 1.5) + double_field(2, -2.25) + double_field(3, 0.5) + str_field(4, "F1")
)
LOC_B_BYTES = double_field(1, 10.0) + double_field(2, 20.0) + str_field(4, "B2")


def loc_a() -> task_pb2.Location:
    return task_pb2.Location(x=1.5, y=-2.25, z=0.5, floor="F1")


def loc_b() -> task_pb2.Location:
    return task_pb2.Location(x=10.0, y=20.0, z=0.0, floor="B2")


def sample_task() -> task_pb2.Task:
    return task_pb2.Task(
        id="task-1",
        type=task_pb2.TASK_TYPE_DELIVERY,
        sources=[loc_a()],
        terminals=[loc_b(), loc_a()],
        priority=task_pb2.PRIORITY_HIGH,
        created_at=1_767_225_600,
        entity_id="mall-1",
        metadata={"order": "42", "by": "kiosk"},
    )


TASK_BYTES = (
    str_field(1, "task-1")
    + int_field(2, 1)
    + bytes_field(3, LOC_A_BYTES)
    + bytes_field(4, LOC_B_BYTES)
    + bytes_field(4, LOC_A_BYTES)
    + int_field(5, 3)
    + int_field(6, 1_767_225_600)
    + str_field(7, "mall-1")
    + map_entry(8, "by", "kiosk")  # deterministic serialization sorts map keys
    + map_entry(8, "order", "42")
)


def sample_robot() -> task_pb2.RobotInfo:
    return task_pb2.RobotInfo(
        id="robot-7",
        name="Porter",
        state=task_pb2.ROBOT_STATE_CHARGING,
        current_location=loc_a(),
        battery_level=87.5,
        current_task_id="task-1",
        last_seen=1 << 40,
        entity_id="mall-1",
    )


ROBOT_BYTES = (
    str_field(1, "robot-7")
    + str_field(2, "Porter")
    + int_field(3, 3)
    + bytes_field(4, LOC_A_BYTES)
    + double_field(5, 87.5)
    + str_field(6, "task-1")
    + int_field(7, 1 << 40)
    + str_field(8, "mall-1")
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(loc_a(), LOC_A_BYTES, id="Location"),
        pytest.param(sample_task(), TASK_BYTES, id="Task"),
        pytest.param(task_pb2.Task(created_at=-1), int_field(6, -1), id="Task.created_at<0"),
        pytest.param(sample_robot(), ROBOT_BYTES, id="RobotInfo"),
        pytest.param(
            task_pb2.RobotReportRequest(robot=sample_robot()),
            bytes_field(1, ROBOT_BYTES),
            id="RobotReportRequest",
        ),
        pytest.param(
            task_pb2.RobotReportResponse(success=True, message="ok"),
            int_field(1, 1) + str_field(2, "ok"),
            id="RobotReportResponse",
        ),
        pytest.param(
            task_pb2.RobotDistributionRequest(entity_id="mall-1"),
            str_field(1, "mall-1"),
            id="RobotDistributionRequest",
        ),
        pytest.param(
            task_pb2.TaskAssignment(robot_id="robot-7", task=sample_task()),
            str_field(1, "robot-7") + bytes_field(2, TASK_BYTES),
            id="TaskAssignment",
        ),
    ],
)
def test_task_messages_match_hand_encoding(message: Message, expected: bytes) -> None:
    assert message.SerializeToString(deterministic=True) == expected
    decoded = type(message).FromString(expected)
    assert decoded == message


@pytest.mark.parametrize(
    ("enum", "numbers"),
    [
        (
            task_pb2.TaskType,
            {
                "TASK_TYPE_UNSPECIFIED": 0,
                "TASK_TYPE_DELIVERY": 1,
                "TASK_TYPE_PATROL": 2,
                "TASK_TYPE_RETURN_HOME": 3,
                "TASK_TYPE_EMERGENCY": 4,
            },
        ),
        (
            task_pb2.Priority,
            {
                "PRIORITY_UNSPECIFIED": 0,
                "PRIORITY_LOW": 1,
                "PRIORITY_NORMAL": 2,
                "PRIORITY_HIGH": 3,
                "PRIORITY_URGENT": 4,
            },
        ),
        (
            task_pb2.RobotState,
            {
                "ROBOT_STATE_UNSPECIFIED": 0,
                "ROBOT_STATE_IDLE": 1,
                "ROBOT_STATE_BUSY": 2,
                "ROBOT_STATE_CHARGING": 3,
                "ROBOT_STATE_ERROR": 4,
                "ROBOT_STATE_OFFLINE": 5,
            },
        ),
    ],
)
def test_task_enum_numbers(enum: EnumTypeWrapper, numbers: dict[str, int]) -> None:
    assert dict(enum.items()) == numbers


def test_task_service_and_method_names() -> None:
    assert task_pb2.DESCRIPTOR.package == "task"
    service = task_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
    methods = {
        f"/{service.full_name}/{method.name}": (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        )
        for method in service.methods
    }
    assert methods == {
        "/task.OrchestratorService/ReportRobotStatus": (
            "task.RobotReportRequest",
            "task.RobotReportResponse",
            False,
            False,
        ),
        "/task.OrchestratorService/GetTaskAssignment": (
            "task.RobotDistributionRequest",
            "task.TaskAssignment",
            False,
            True,
        ),
    }


def test_gateway_v1_method_table() -> None:
    """The navign.gateway.v1 surface later issues implement (name -> server streaming)."""
    assert gateway_pb2.DESCRIPTOR.package == "navign.gateway.v1"
    methods = [
        method
        for service in gateway_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    assert not any(method.client_streaming for method in methods)
    table = {
        f"/{method.containing_service.full_name}/{method.name}": method.server_streaming
        for method in methods
    }
    prefix = "/navign.gateway.v1."
    assert table == {
        prefix + "GatewayService/GetStatus": False,
        prefix + "GatewayService/WatchStatus": True,
        prefix + "BeaconService/ListBeacons": False,
        prefix + "BeaconService/GetBeacon": False,
        prefix + "BeaconService/WatchBeacons": True,
        prefix + "FirmwareService/ListReleases": False,
        prefix + "RolloutService/ListRollouts": False,
        prefix + "RolloutService/GetRollout": False,
        prefix + "RolloutService/WatchRollout": True,
        prefix + "RolloutService/PauseRollout": False,
        prefix + "RolloutService/ResumeRollout": False,
        prefix + "RolloutService/AbortRollout": False,
        prefix + "RolloutService/ApproveWave": False,
    }
    for descriptor in gateway_pb2.DESCRIPTOR.enum_types_by_name.values():
        assert descriptor.values_by_number[0].name.endswith("_UNSPECIFIED"), descriptor.name


# ------------------------------------------------ task.* loopback round trip


@dataclass
class Orchestrator(task_pb2_grpc.OrchestratorServiceServicer):
    """An OrchestratorService on the generated servicer base, for the round trip."""

    assignments: list[task_pb2.TaskAssignment]
    endless: bool = False
    reports: list[task_pb2.RobotInfo] = field(default_factory=list)

    async def ReportRobotStatus(
        self,
        request: task_pb2.RobotReportRequest,
        context: grpc.aio.ServicerContext[
            task_pb2.RobotReportRequest, task_pb2.RobotReportResponse
        ],
    ) -> task_pb2.RobotReportResponse:
        self.reports.append(request.robot)
        return task_pb2.RobotReportResponse(success=True, message=f"stored {request.robot.id}")

    async def GetTaskAssignment(
        self,
        request: task_pb2.RobotDistributionRequest,
        context: grpc.aio.ServicerContext[
            task_pb2.RobotDistributionRequest, task_pb2.TaskAssignment
        ],
    ) -> AsyncIterator[task_pb2.TaskAssignment]:
        rounds = 1000 if self.endless else 1  # bounded even when "endless"
        for _ in range(rounds):
            for assignment in self.assignments:
                if assignment.task.entity_id == request.entity_id:
                    yield assignment
            if self.endless:
                await asyncio.sleep(0.01)


@dataclass
class Served:
    orchestrator: Orchestrator
    channel: grpc.aio.Channel


def _assignment(robot_id: str, task_id: str, entity_id: str) -> task_pb2.TaskAssignment:
    task = sample_task()
    task.id = task_id
    task.entity_id = entity_id
    return task_pb2.TaskAssignment(robot_id=robot_id, task=task)


@contextlib.asynccontextmanager
async def serving(
    register: Callable[[grpc.aio.Server], None],
) -> AsyncIterator[grpc.aio.Channel]:
    """A grpc.aio server on an ephemeral loopback port, and a channel to it."""
    server = grpc.aio.server()
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[OWN_SUBCHANNELS]
        ) as channel:
            yield channel
    finally:
        await server.stop(grace=None)


@pytest.fixture
async def orchestrator() -> AsyncIterator[Served]:
    servicer = Orchestrator(
        assignments=[
            _assignment("robot-1", "t-1", "mall-1"),
            _assignment("robot-2", "t-2", "mall-2"),
            _assignment("robot-3", "t-3", "mall-1"),
        ]
    )

    def register(server: grpc.aio.Server) -> None:
        task_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)

    async with serving(register) as channel:
        yield Served(servicer, channel)


async def test_report_robot_status_round_trip(orchestrator: Served) -> None:
    stub = task_pb2_grpc.OrchestratorServiceStub(orchestrator.channel)
    response = await stub.ReportRobotStatus(
        task_pb2.RobotReportRequest(robot=sample_robot()), timeout=CALL_TIMEOUT_S
    )
    assert response == task_pb2.RobotReportResponse(success=True, message="stored robot-7")
    assert orchestrator.orchestrator.reports == [sample_robot()]


async def test_report_robot_status_by_raw_path_and_bytes(orchestrator: Served) -> None:
    """What a foreign (Go) client sends: the method path and hand-encoded bytes."""
    call = orchestrator.channel.unary_unary(
        "/task.OrchestratorService/ReportRobotStatus",
        request_serializer=None,
        response_deserializer=None,
    )
    raw = await call(bytes_field(1, ROBOT_BYTES), timeout=CALL_TIMEOUT_S)
    assert raw == int_field(1, 1) + str_field(2, "stored robot-7")


async def test_get_task_assignment_stream(orchestrator: Served) -> None:
    stub = task_pb2_grpc.OrchestratorServiceStub(orchestrator.channel)
    call = stub.GetTaskAssignment(
        task_pb2.RobotDistributionRequest(entity_id="mall-1"), timeout=CALL_TIMEOUT_S
    )
    received = [assignment async for assignment in call]
    assert [(a.robot_id, a.task.id) for a in received] == [("robot-1", "t-1"), ("robot-3", "t-3")]
    assert received[0].task == _assignment("robot-1", "t-1", "mall-1").task
    assert await call.code() == grpc.StatusCode.OK


async def test_get_task_assignment_client_cancels_open_stream(orchestrator: Served) -> None:
    orchestrator.orchestrator.endless = True
    stub = task_pb2_grpc.OrchestratorServiceStub(orchestrator.channel)
    call = stub.GetTaskAssignment(
        task_pb2.RobotDistributionRequest(entity_id="mall-2"), timeout=CALL_TIMEOUT_S
    )
    received: list[str] = []
    async for assignment in call:
        received.append(assignment.task.id)
        if len(received) == 5:
            break
    call.cancel()
    assert received == ["t-2"] * 5
    assert await call.code() == grpc.StatusCode.CANCELLED


# ---------------------------------------- navign.gateway.v1 loopback round trip


def _status() -> gateway_pb2.GatewayStatus:
    return gateway_pb2.GatewayStatus(
        gateway_id="gw-1",
        entity_id="mall-1",
        version="0.1.0",
        uptime=Duration(seconds=3600),
        uplink_state=gateway_pb2.UPLINK_STATE_CONNECTED,
        last_sync_time=Timestamp(seconds=1_767_225_600),
        last_sync_sequence=42,
        checksums=gateway_pb2.DataChecksums(global_checksum="abc", collections={"beacons": "def"}),
        firmware_cache=gateway_pb2.FirmwareCacheUsage(used_bytes=1024, release_count=1),
    )


class Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    """GetStatus / WatchStatus with the documented bearer-token check."""

    async def _authorize(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bearer token required")

    async def GetStatus(
        self,
        request: gateway_pb2.GetStatusRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> gateway_pb2.GetStatusResponse:
        await self._authorize(context)
        return gateway_pb2.GetStatusResponse(status=_status())

    async def WatchStatus(
        self,
        request: gateway_pb2.WatchStatusRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[gateway_pb2.WatchStatusResponse]:
        await self._authorize(context)
        status = _status()
        for sequence in range(43, 46):  # snapshot, then two "changes", then shutdown
            yield gateway_pb2.WatchStatusResponse(status=status)
            status.last_sync_sequence = sequence


@pytest.fixture
async def gateway_channel() -> AsyncIterator[grpc.aio.Channel]:
    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(Gateway(), server)

    async with serving(register) as channel:
        yield channel


AUTH = (("authorization", f"Bearer {TOKEN}"),)


async def test_gateway_get_status(gateway_channel: grpc.aio.Channel) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    response = await stub.GetStatus(
        gateway_pb2.GetStatusRequest(), metadata=AUTH, timeout=CALL_TIMEOUT_S
    )
    assert response.status == _status()
    assert response.status.checksums.collections["beacons"] == "def"


async def test_gateway_requires_bearer_token(gateway_channel: grpc.aio.Channel) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.GetStatus(gateway_pb2.GetStatusRequest(), timeout=CALL_TIMEOUT_S)
    assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_gateway_watch_status(gateway_channel: grpc.aio.Channel) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    call = stub.WatchStatus(
        gateway_pb2.WatchStatusRequest(min_interval=Duration(seconds=1)),
        metadata=AUTH,
        timeout=CALL_TIMEOUT_S,
    )
    sequences = [message.status.last_sync_sequence async for message in call]
    assert sequences == [42, 43, 44]

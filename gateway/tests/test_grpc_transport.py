"""The gRPC transport's own limits (``navign_gateway.grpc_transport``), on a real server on
127.0.0.1, called through grpcio (the reference implementation) and, for keepalive, through a
bare HTTP/2 connection that stops answering."""

# grpc_tools writes no .pyi for *_pb2_grpc modules: the stub and raw channel calls are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import grpc.aio
import h2.config
import h2.connection
import pytest

from navign_gateway.grpc_transport import (
    MAX_MESSAGE_BYTES,
    CallContext,
    GrpcServer,
    GrpcServerError,
    Status,
)
from navign_proto.grpc import task_pb2, task_pb2_grpc
from navign_proto.testing import OWN_SUBCHANNELS

from .conftest import wait_until

SERVICE = task_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
TIMEOUT_S = 5.0
BIG = [
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.max_receive_message_length", 8 << 20),
    OWN_SUBCHANNELS,
]


class Echo:
    """ReportRobotStatus answers with the robot's name as its message, twice for the robot
    "double" (so a test controls the reply's size), after ``delay`` seconds;
    GetTaskAssignment streams until cancelled."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.streams_open = 0
        self.cancelled = 0

    async def ReportRobotStatus(
        self, request: task_pb2.RobotReportRequest, context: CallContext
    ) -> task_pb2.RobotReportResponse:
        if request.robot.id == "abort":
            await context.abort(Status.FAILED_PRECONDITION, f"aborted for {context.peer()}")
        await asyncio.sleep(self.delay)
        copies = 2 if request.robot.id == "double" else 1
        return task_pb2.RobotReportResponse(success=True, message=request.robot.name * copies)

    async def GetTaskAssignment(
        self, request: task_pb2.RobotDistributionRequest, context: CallContext
    ) -> AsyncGenerator[task_pb2.TaskAssignment, None]:
        self.streams_open += 1
        try:
            yield task_pb2.TaskAssignment(robot_id=f"hello-{request.entity_id}")
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.streams_open -= 1


@contextlib.asynccontextmanager
async def serving(
    address: str = "127.0.0.1:0", **options: Any
) -> AsyncIterator[tuple[GrpcServer, Echo, grpc.aio.Channel]]:
    echo = Echo()
    server = GrpcServer(**options)
    server.add(SERVICE, echo)
    port = await server.start(address)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=BIG)
    try:
        yield server, echo, channel
    finally:
        await channel.close(None)
        await server.stop(None)


def report(name: str = "", robot_id: str = "r-1") -> task_pb2.RobotReportRequest:
    return task_pb2.RobotReportRequest(robot=task_pb2.RobotInfo(id=robot_id, name=name))


async def call(channel: grpc.aio.Channel, request: Any) -> task_pb2.RobotReportResponse:
    stub = task_pb2_grpc.OrchestratorServiceStub(channel)
    response: task_pb2.RobotReportResponse = await stub.ReportRobotStatus(
        request, timeout=TIMEOUT_S
    )
    return response


async def test_a_call_round_trips_and_abort_carries_code_and_peer() -> None:
    async with serving() as (_, _, channel):
        assert (await call(channel, report("hi"))).message == "hi"
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(channel, report(robot_id="abort"))
        assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (excinfo.value.details() or "").startswith("aborted for ipv4:127.0.0.1:")


async def test_a_request_over_the_limit_is_refused_before_it_is_read() -> None:
    async with serving() as (_, _, channel):
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(channel, report("x" * (MAX_MESSAGE_BYTES + 1)))
        assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the limit" in (excinfo.value.details() or "")
        # The connection and the server go on serving.
        assert (await call(channel, report("ok"))).message == "ok"


async def test_a_reply_over_the_limit_is_not_sent() -> None:
    async with serving() as (_, _, channel):
        name = "y" * (MAX_MESSAGE_BYTES // 2 + 1)  # the request fits, the doubled reply not
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(channel, report(name, robot_id="double"))
        assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "reply message" in (excinfo.value.details() or "")


async def test_a_message_that_does_not_decode_is_invalid_argument() -> None:
    async with serving() as (_, _, channel):
        method = channel.unary_unary(
            "/task.OrchestratorService/ReportRobotStatus",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await method(b"\x0a\xff\xff\xff", timeout=TIMEOUT_S)  # a length past the end
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_compressed_message_is_refused() -> None:
    async with serving() as (_, _, channel):
        stub = task_pb2_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await stub.ReportRobotStatus(
                report("z" * 4096), timeout=TIMEOUT_S, compression=grpc.Compression.Gzip
            )
        assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_an_unknown_method_is_unimplemented() -> None:
    async with serving() as (_, _, channel):
        method = channel.unary_unary(
            "/task.OrchestratorService/Nope", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await method(b"", timeout=TIMEOUT_S)
        assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_calls_beyond_the_cap_are_refused_and_the_slots_come_back() -> None:
    async with serving(max_concurrent_rpcs=2) as (server, echo, channel):
        stub = task_pb2_grpc.OrchestratorServiceStub(channel)
        first = stub.GetTaskAssignment(task_pb2.RobotDistributionRequest(entity_id="a"))
        second = stub.GetTaskAssignment(task_pb2.RobotDistributionRequest(entity_id="b"))
        assert (await first.read()).robot_id == "hello-a"
        assert (await second.read()).robot_id == "hello-b"
        assert server.active_calls == 2
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(channel, report("three"))
        assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()  # the client goes: the handler is cancelled, its slot is free
        await wait_until(lambda: server.active_calls == 1)
        assert echo.cancelled == 1
        assert (await call(channel, report("again"))).message == "again"
        second.cancel()


async def test_a_stop_waits_for_calls_in_flight_then_refuses_and_closes() -> None:
    async with serving() as (server, echo, channel):
        echo.delay = 0.3
        in_flight = asyncio.ensure_future(call(channel, report("slow")))
        await wait_until(lambda: server.active_calls == 1)
        stopping = asyncio.ensure_future(server.stop(5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(channel, report("late"))
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await in_flight).message == "slow"  # finished within the grace
        await asyncio.wait_for(stopping, TIMEOUT_S)
        # Stopped: the connection is closed, not left serving.
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(channel, report("after"))
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_stop_cancels_what_outlives_the_grace() -> None:
    async with serving() as (server, echo, channel):
        stub = task_pb2_grpc.OrchestratorServiceStub(channel)
        stream = stub.GetTaskAssignment(task_pb2.RobotDistributionRequest(entity_id="a"))
        assert (await stream.read()).robot_id == "hello-a"
        started = time.monotonic()
        await server.stop(0.2)
        assert time.monotonic() - started < 2.0
        assert echo.cancelled == 1
        assert echo.streams_open == 0
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(stream.read(), TIMEOUT_S)


async def test_a_port_in_use_and_a_bad_address_are_errors() -> None:
    async with serving() as (server, _, _):
        other = GrpcServer()
        other.add(SERVICE, Echo())
        with pytest.raises(GrpcServerError, match=str(server.port)):
            await other.start(f"127.0.0.1:{server.port}")
        with pytest.raises(GrpcServerError, match="not-a-port"):
            await other.start("127.0.0.1:not-a-port")
        with pytest.raises(GrpcServerError, match="out of range"):
            await other.start("127.0.0.1:70000")


def test_a_servicer_missing_a_method_is_refused() -> None:
    class Half:
        async def ReportRobotStatus(self, request: Any, context: Any) -> Any:
            raise NotImplementedError

    with pytest.raises(ValueError, match="GetTaskAssignment"):
        GrpcServer().add(SERVICE, Half())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_every_address_serves_both_families() -> None:
    async with serving("[::]:0") as (server, _, channel):
        assert (await call(channel, report("v4"))).message == "v4"
        v6 = grpc.aio.insecure_channel(f"[::1]:{server.port}", options=[OWN_SUBCHANNELS])
        try:
            assert (await call(v6, report("v6"))).message == "v6"
        finally:
            await v6.close(None)


async def test_a_peer_that_stops_answering_pings_is_dropped() -> None:
    """A bare HTTP/2 client opens a connection and goes silent (a tower whose power was cut):
    the server's keepalive ping goes unanswered and it closes the connection."""
    async with serving(keepalive_seconds=0.3, keepalive_timeout_seconds=0.3) as (server, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        writer.write(client.data_to_send())
        await writer.drain()
        received = 0
        started = time.monotonic()
        async with asyncio.timeout(TIMEOUT_S):
            while chunk := await reader.read(65536):  # never answered: no ping ACK goes back
                received += len(chunk)
        assert received > 0  # the server's SETTINGS and at least one PING arrived
        assert 0.3 <= time.monotonic() - started < TIMEOUT_S  # a ping interval, then the drop
        writer.close()


async def test_a_channel_of_its_own_reaches_a_port_a_stale_channel_still_dials() -> None:
    """The CI failure this suite once had: a channel left dialling a port with no server keeps
    grpcio's shared subchannel in backoff, and a new channel to a server later given that port
    failed at once with the old "Connection refused". The suite's channels use
    ``OWN_SUBCHANNELS``; with it the new channel connects."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stale = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=BIG[:2])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(stale, report("nobody"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with serving(f"127.0.0.1:{port}") as (_, _, channel):
            assert (await call(channel, report("fresh"))).message == "fresh"
    finally:
        await stale.close(None)

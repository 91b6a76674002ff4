"""The gateway's gRPC port (protocol §7): ``task.OrchestratorService`` for the tower, and the
server that carries it together with whatever other servicers the daemon registers.

``task.OrchestratorService`` takes no credentials (the existing Go tower sends none, §7.1); it
belongs on the mall network only. Its wire format is fixed by ``proto/protos/task.proto``. The
transport is :mod:`navign_gateway.grpc_transport` (grpclib, with its limits).

Public: :class:`OrchestratorServicer`, :func:`start_grpc_server`, :func:`stop_grpc_server`,
:class:`GrpcServerError`.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Final

from navign_gateway.grpc_transport import (
    MAX_CONCURRENT_RPCS,
    CallContext,
    GrpcServer,
    GrpcServerError,
    Status,
)
from navign_gateway.robots import InvalidRobotReportError, RobotRegistry, RobotRegistryFullError
from navign_gateway.tasks import (
    AssignmentStreamClosedError,
    AssignmentStreamOverflowError,
    TaskEngine,
)
from navign_proto.grpc import task_pb2

__all__ = [
    "GrpcServer",
    "GrpcServerError",
    "OrchestratorServicer",
    "ServicerRegistration",
    "start_grpc_server",
    "stop_grpc_server",
]

log = logging.getLogger(__name__)

_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")

ServicerRegistration = Callable[[GrpcServer], None]
"""Adds one servicer to a server (e.g. :meth:`OrchestratorServicer.register`)."""


class OrchestratorServicer:
    """``task.OrchestratorService`` over a :class:`RobotRegistry` and a :class:`TaskEngine`."""

    def __init__(self, registry: RobotRegistry, engine: TaskEngine) -> None:
        self._registry = registry
        self._engine = engine

    def register(self, server: GrpcServer) -> None:
        server.add(task_pb2.DESCRIPTOR.services_by_name["OrchestratorService"], self)

    def end_streams(self) -> None:
        """End every open ``GetTaskAssignment`` with OK (before the server stops), so towers
        see a clean end and reconnect instead of a cancelled call."""
        self._engine.close_streams()

    async def ReportRobotStatus(  # noqa: N802 - the method name is the wire's
        self, request: task_pb2.RobotReportRequest, context: CallContext
    ) -> task_pb2.RobotReportResponse:
        """Keep the robot's status; an invalid one is refused with INVALID_ARGUMENT and
        changes nothing."""
        if not request.HasField("robot"):
            await context.abort(Status.INVALID_ARGUMENT, "robot: required")
        try:
            record = await self._registry.report(request.robot)
        except InvalidRobotReportError as exc:
            log.debug("robot report refused: %s", exc)
            await context.abort(Status.INVALID_ARGUMENT, str(exc))
        except RobotRegistryFullError as exc:
            log.warning("robot report refused: %s", exc)
            await context.abort(Status.RESOURCE_EXHAUSTED, str(exc))
        return task_pb2.RobotReportResponse(
            success=True, message=f"status of {record.robot_id} stored"
        )

    async def GetTaskAssignment(  # noqa: N802 - the method name is the wire's
        self, request: task_pb2.RobotDistributionRequest, context: CallContext
    ) -> AsyncIterator[task_pb2.TaskAssignment]:
        """The entity's outstanding assignments, then each new one, until the tower cancels
        or the gateway stops (OK). A tower more than the engine's ``stream_queue_size``
        assignments behind is disconnected with RESOURCE_EXHAUSTED; it reconnects and gets
        the outstanding ones again."""
        entity_id = request.entity_id
        if not _ID_RE.fullmatch(entity_id):
            await context.abort(
                Status.INVALID_ARGUMENT,
                "entity_id: must be 1-64 letters, digits or ._:-",
            )
        try:
            async with self._engine.subscribe(entity_id) as stream:
                log.info("tower %s streams assignments of %s", context.peer(), entity_id)
                while True:  # ends by close (return), overflow (abort) or cancellation
                    try:
                        assignment = await stream.next()
                    except AssignmentStreamOverflowError as exc:
                        log.warning("tower %s dropped: %s", context.peer(), exc)
                        await context.abort(Status.RESOURCE_EXHAUSTED, str(exc))
                    yield assignment
        except AssignmentStreamClosedError:
            return


async def start_grpc_server(
    address: str,
    servicers: Sequence[ServicerRegistration],
    *,
    maximum_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    tls: ssl.SSLContext | None = None,
) -> tuple[GrpcServer, int]:
    """Register ``servicers``, listen on ``address`` (``host:port``; port 0 picks one), with TLS
    when ``tls`` is given, start; returns the server and the bound port. Raises
    :class:`GrpcServerError`."""
    server = GrpcServer(max_concurrent_rpcs=maximum_concurrent_rpcs)
    for register in servicers:
        register(server)
    port = await server.start(address, tls=tls)
    return server, port


async def stop_grpc_server(
    server: GrpcServer,
    grace: float | None,
    *,
    end_streams: Iterable[Callable[[], None]] = (),
) -> None:
    """Stop the server: ``end_streams`` first (e.g. :meth:`OrchestratorServicer.end_streams`,
    so open streams end with OK rather than CANCELLED), then new calls are refused at once and
    calls in flight get ``grace`` seconds before they are cancelled."""
    for end in end_streams:
        end()
    await server.stop(grace)

"""``navign.gateway.v1``: the operator API on the gateway's gRPC port (protocol §7.2), over the
beacon inventory, the firmware cache, the rollout engine and the gateway's status.

``proto/protos/navign/gateway/v1/gateway.proto`` is the contract. In short:

- every call needs a bearer token (:mod:`navign_gateway.grpc_ops_auth`); the mutating calls
  (PauseRollout, ResumeRollout, AbortRollout, ApproveWave) an operator's;
- ``List*`` page with opaque tokens (:mod:`navign_gateway.grpc_ops_messages`);
- ``Watch*`` send a full snapshot first, then changes, through a bounded queue per stream
  (:mod:`navign_gateway.grpc_ops_streams`, which also coalesces RSSI/last-seen-only beacon
  updates and bytes-only rollout progress): a client too far behind is dropped with
  RESOURCE_EXHAUSTED. WatchStatus polls the status every ``max(min_interval,
  STATUS_POLL_SECONDS)`` and sends it when something other than the uptime changed;
  WatchBeacons re-checks every :data:`LIVENESS_SWEEP_SECONDS` which beacons went offline (no
  inventory event says so); WatchRollout ends with OK after the message reporting ABORTED or
  COMPLETED.

The daemon wires it::

    streams = WatchStreams()
    ops = ops_servicers(access=AccessPolicy.from_config(config.grpc), status=gateway.status,
                        inventory=..., firmware=..., rollouts=..., streams=streams)
    server, port = await start_grpc_server(address, [orchestrator.register, *ops])
    ...
    await stop_grpc_server(server, grace, end_streams=[orchestrator.end_streams,
                                                        streams.end_streams])

Public: :func:`ops_servicers`, :class:`WatchStreams`, :class:`AccessPolicy`,
:data:`StatusProvider`, the servicers (:class:`GatewayServicer`, :class:`BeaconServicer`,
:class:`FirmwareServicer`, :class:`RolloutServicer`) and the timing constants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any, Final

from navign_gateway.beacons import BeaconInventory
from navign_gateway.firmware import CachedRelease, FirmwareCache
from navign_gateway.grpc_ops_auth import AccessPolicy, Role
from navign_gateway.grpc_ops_messages import (
    PageTokenError,
    ReleaseCatalog,
    beacon_message,
    cache_usage_message,
    firmware_kind,
    page_of,
    rollout_message,
    rollout_state,
    status_message,
)
from navign_gateway.grpc_ops_streams import (
    BeaconWatch,
    ChangeQueue,
    RolloutWatch,
    StreamOverflowError,
    WatchStreams,
)
from navign_gateway.grpc_service import ServicerRegistration
from navign_gateway.grpc_transport import CallContext, GrpcServer, Status
from navign_gateway.rollout import EntryState, Rollout, RolloutControlError, RolloutEngine
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb

__all__ = [
    "LIVENESS_SWEEP_SECONDS",
    "STATUS_POLL_SECONDS",
    "AccessPolicy",
    "BeaconServicer",
    "FirmwareServicer",
    "GatewayServicer",
    "RolloutServicer",
    "StatusProvider",
    "WatchStreams",
    "ops_servicers",
]

log = logging.getLogger(__name__)

#: WatchStatus looks at the status at most this often, whatever min_interval asks.
STATUS_POLL_SECONDS = 1.0
#: How often WatchBeacons re-checks which beacons went offline.
LIVENESS_SWEEP_SECONDS = 5.0
MAX_REASON_CHARS: Final = 1000
MAX_MIN_INTERVAL_SECONDS: Final = 24 * 3600
#: The calls that need an operator's token; every other call a reader's.
MUTATING: Final = frozenset({"PauseRollout", "ResumeRollout", "AbortRollout", "ApproveWave"})

StatusProvider = Callable[[], Awaitable[Mapping[str, Any]]]
"""Returns the gateway's status, as :meth:`navign_gateway.daemon.Gateway.status` does."""

Context = CallContext


def ops_servicers(
    *,
    access: AccessPolicy,
    status: StatusProvider,
    inventory: BeaconInventory,
    firmware: FirmwareCache,
    rollouts: RolloutEngine,
    streams: WatchStreams,
    clock: Callable[[], float] = time.time,
    max_concurrent: int = 0,
) -> list[ServicerRegistration]:
    """The four services, each behind ``access``, ready for :func:`start_grpc_server`.
    ``streams`` ends their Watch* calls; ``clock`` is the wall clock the inventory's liveness
    is judged by; ``max_concurrent`` is what RolloutPolicy.max_concurrent reports (the
    engine's transfer slots, Wi-Fi plus BLE; 0 when not known)."""
    catalog = ReleaseCatalog(firmware)
    services: list[tuple[str, object]] = [
        ("GatewayService", GatewayServicer(status, firmware, streams)),
        ("BeaconService", BeaconServicer(inventory, streams, clock)),
        ("FirmwareService", FirmwareServicer(firmware, catalog)),
        ("RolloutService", RolloutServicer(rollouts, firmware, catalog, streams, max_concurrent)),
    ]
    return [_guarded(name, servicer, access) for name, servicer in services]


def _guarded(service: str, servicer: object, access: AccessPolicy) -> ServicerRegistration:
    """Registers ``servicer`` with every method of ``service`` (from the proto's descriptor,
    so none can be left out) behind ``access``."""
    descriptor = pb.DESCRIPTOR.services_by_name[service]
    guarded = SimpleNamespace(
        **{
            m.name: _guard(getattr(servicer, m.name), access, m.name, m.server_streaming)
            for m in descriptor.methods
        }
    )

    def register(server: GrpcServer) -> None:
        server.add(descriptor, guarded)

    return register


def _guard(
    method: Callable[..., Any], access: AccessPolicy, name: str, streaming: bool
) -> Callable[..., Any]:
    needed = Role.OPERATOR if name in MUTATING else Role.READER
    if streaming:

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await access.authorize(context, needed, name)
            async with contextlib.aclosing(method(request, context)) as messages:
                async for message in messages:
                    yield message

        return stream

    async def unary(request: Any, context: Context) -> Any:
        token = await access.authorize(context, needed, name)
        if needed is Role.OPERATOR:
            log.info(
                "%s %r by token %s from %s",
                name,
                getattr(request, "rollout_id", ""),
                token,
                context.peer(),
            )
        return await method(request, context)

    return unary


@contextlib.contextmanager
def _subscribed(unsubscribe: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        unsubscribe()


async def _next(queue: ChangeQueue[Any], context: Context, within: float | None = None) -> Any:
    """The queue's next message (None: ended or timed out); a client that fell behind is
    dropped with RESOURCE_EXHAUSTED."""
    try:
        return await queue.get(within)
    except StreamOverflowError as exc:
        log.warning("%s dropped: %s", context.peer(), exc)
        await context.abort(Status.RESOURCE_EXHAUSTED, str(exc))


# -- GatewayService ------------------------------------------------------------------------------


class GatewayServicer:
    def __init__(self, status: StatusProvider, firmware: FirmwareCache, streams: WatchStreams):
        self._status = status
        self._firmware = firmware
        self._streams = streams

    async def _current(self, context: Context) -> pb.GatewayStatus:
        try:
            status = await self._status()
        except Exception as exc:  # noqa: BLE001 - a failed status read is the caller's answer
            log.warning("gateway status unavailable: %s", exc)
            await context.abort(Status.UNAVAILABLE, f"status unavailable: {exc}")
        return status_message(status, self._firmware)

    async def GetStatus(  # noqa: N802 - the method name is the wire's
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        return pb.GetStatusResponse(status=await self._current(context))

    async def WatchStatus(  # noqa: N802
        self, request: pb.WatchStatusRequest, context: Context
    ) -> AsyncIterator[pb.WatchStatusResponse]:
        given = request.min_interval
        interval = (given.seconds + given.nanos / 1e9) or 1.0
        if not 0 < interval <= MAX_MIN_INTERVAL_SECONDS:
            await context.abort(
                Status.INVALID_ARGUMENT, "min_interval: must be within 0 s to 1 day"
            )
        queue: ChangeQueue[None] = ChangeQueue()
        shown: pb.GatewayStatus | None = None
        with self._streams.track(queue):
            while not queue.ended:
                status = await self._current(context)
                compared = pb.GatewayStatus()
                compared.CopyFrom(status)
                compared.ClearField("uptime")
                if compared != shown:
                    shown = compared
                    yield pb.WatchStatusResponse(status=status)
                await queue.get(max(interval, STATUS_POLL_SECONDS))


# -- BeaconService -------------------------------------------------------------------------------


def _beacon_filter(f: pb.BeaconFilter) -> tuple[list[Any], Callable[[pb.Beacon], bool]]:
    """The filter's normalised form (for page tokens) and its test."""
    states = frozenset(f.ota_states)
    key = [
        f.chip_target,
        f.firmware_version,
        f.app_version,
        sorted(states),
        int(f.transport),
        f.online_only,
    ]

    def matches(b: pb.Beacon) -> bool:
        return (
            (not f.chip_target or b.chip_target == f.chip_target)
            and (not f.firmware_version or b.firmware_version == f.firmware_version)
            and (not f.app_version or b.app_version == f.app_version)
            and (not states or b.ota_state in states)
            and (f.transport == pb.TRANSPORT_UNSPECIFIED or b.transport == f.transport)
            and (not f.online_only or b.online)
        )

    return key, matches


class BeaconServicer:
    def __init__(
        self, inventory: BeaconInventory, streams: WatchStreams, clock: Callable[[], float]
    ) -> None:
        self._inventory = inventory
        self._streams = streams
        self._clock = clock

    async def ListBeacons(  # noqa: N802
        self, request: pb.ListBeaconsRequest, context: Context
    ) -> pb.ListBeaconsResponse:
        key, matches = _beacon_filter(request.filter)
        now = self._clock()
        beacons = [beacon_message(r, now) for r in self._inventory.all()]
        try:
            page = page_of(
                [b for b in beacons if matches(b)],
                lambda b: (b.beacon_id,),
                listing="ListBeacons",
                filters=key,
                requested_size=request.page_size,
                token=request.page_token,
            )
        except PageTokenError as exc:
            await context.abort(Status.INVALID_ARGUMENT, str(exc))
        return pb.ListBeaconsResponse(
            beacons=page.items, next_page_token=page.next_page_token, total_size=page.total
        )

    async def GetBeacon(  # noqa: N802
        self, request: pb.GetBeaconRequest, context: Context
    ) -> pb.GetBeaconResponse:
        record = self._inventory.get(request.beacon_id) if request.beacon_id else None
        if record is None:
            await context.abort(Status.NOT_FOUND, f"no beacon {request.beacon_id!r}")
        return pb.GetBeaconResponse(beacon=beacon_message(record, self._clock()))

    async def WatchBeacons(  # noqa: N802
        self, request: pb.WatchBeaconsRequest, context: Context
    ) -> AsyncIterator[pb.WatchBeaconsResponse]:
        _key, matches = _beacon_filter(request.filter)
        queue: ChangeQueue[pb.WatchBeaconsResponse] = ChangeQueue()
        watch = BeaconWatch(queue, matches, self._clock)
        loop = asyncio.get_running_loop()
        with self._streams.track(queue), _subscribed(self._inventory.subscribe(watch.consider)):
            for message in watch.snapshot(self._inventory.all()):
                yield message
            sweep_at = loop.time() + LIVENESS_SWEEP_SECONDS
            while True:  # ends when the queue ends (return) or overflows (abort)
                message = await _next(queue, context, max(0.0, sweep_at - loop.time()))
                if message is not None:
                    yield message
                elif queue.ended:
                    return
                if loop.time() >= sweep_at:
                    for record in self._inventory.all():  # who went offline, silently
                        watch.consider(record)
                    sweep_at = loop.time() + LIVENESS_SWEEP_SECONDS


# -- FirmwareService -----------------------------------------------------------------------------


class FirmwareServicer:
    def __init__(self, cache: FirmwareCache, catalog: ReleaseCatalog) -> None:
        self._cache = cache
        self._catalog = catalog

    async def ListReleases(  # noqa: N802
        self, request: pb.ListReleasesRequest, context: Context
    ) -> pb.ListReleasesResponse:
        def wanted(release: CachedRelease) -> bool:
            return (not request.target or release.target == request.target) and (
                request.kind == pb.FIRMWARE_KIND_UNSPECIFIED
                or firmware_kind(release.kind) == request.kind
            )

        try:
            page = page_of(
                [r for r in self._cache.list() if wanted(r)],
                lambda r: (-r.cached_at.timestamp(), r.firmware_id),  # newest first
                listing="ListReleases",
                filters=[request.target, int(request.kind)],
                requested_size=request.page_size,
                token=request.page_token,
            )
        except PageTokenError as exc:
            await context.abort(Status.INVALID_ARGUMENT, str(exc))
        await self._catalog.load(page.items)
        return pb.ListReleasesResponse(
            releases=[self._catalog.message(r) for r in page.items],
            next_page_token=page.next_page_token,
            cache=cache_usage_message(self._cache),
        )


# -- RolloutService ------------------------------------------------------------------------------


class RolloutServicer:
    def __init__(
        self,
        engine: RolloutEngine,
        cache: FirmwareCache,
        catalog: ReleaseCatalog,
        streams: WatchStreams,
        max_concurrent: int,
    ) -> None:
        self._engine = engine
        self._cache = cache
        self._catalog = catalog
        self._streams = streams
        self._max_concurrent = max_concurrent

    def _summary(self, rollout: Rollout, states: Mapping[str, EntryState]) -> pb.Rollout:
        return rollout_message(rollout, None, states.values(), max_concurrent=self._max_concurrent)

    async def _message(self, rollout: Rollout, *, entries: bool) -> pb.Rollout:
        """``rollout`` (with its entries, from :meth:`RolloutEngine.get`) as a message."""
        await self._catalog.load([self._cache.get(rollout.firmware_id)])
        return rollout_message(
            rollout,
            self._catalog.of_rollout(rollout),
            (e.state for e in rollout.entries.values()),
            max_concurrent=self._max_concurrent,
            entries=rollout.entries.values() if entries else (),
        )

    async def _get(self, rollout_id: str, context: Context) -> Rollout:
        try:
            return self._engine.get(rollout_id)
        except RolloutControlError as exc:
            await context.abort(Status.NOT_FOUND, str(exc))

    async def ListRollouts(  # noqa: N802
        self, request: pb.ListRolloutsRequest, context: Context
    ) -> pb.ListRolloutsResponse:
        states = frozenset(request.states)
        try:
            page = page_of(
                [
                    r
                    for r in self._engine.rollouts()
                    if not states or rollout_state(r.state) in states
                ],
                lambda r: (-r.seq, r.rollout_id),  # newest first
                listing="ListRollouts",
                filters=sorted(states),
                requested_size=request.page_size,
                token=request.page_token,
            )
        except PageTokenError as exc:
            await context.abort(Status.INVALID_ARGUMENT, str(exc))
        full = [self._engine.get(r.rollout_id) for r in page.items]  # entries, for the counts
        return pb.ListRolloutsResponse(
            rollouts=[await self._message(r, entries=False) for r in full],
            next_page_token=page.next_page_token,
        )

    async def GetRollout(  # noqa: N802
        self, request: pb.GetRolloutRequest, context: Context
    ) -> pb.GetRolloutResponse:
        rollout = await self._get(request.rollout_id, context)
        return pb.GetRolloutResponse(rollout=await self._message(rollout, entries=True))

    async def WatchRollout(  # noqa: N802
        self, request: pb.WatchRolloutRequest, context: Context
    ) -> AsyncIterator[pb.WatchRolloutResponse]:
        queue: ChangeQueue[pb.WatchRolloutResponse] = ChangeQueue()
        # Nothing suspends between the snapshot and the subscription: no change falls between.
        rollout = await self._get(request.rollout_id, context)
        watch = RolloutWatch(rollout, queue, self._summary)
        with self._streams.track(queue), _subscribed(self._engine.subscribe(watch.on_change)):
            yield pb.WatchRolloutResponse(rollout=await self._message(rollout, entries=True))
            if rollout.terminal:
                return
            while True:  # ends after the terminal state (return) or on overflow (abort)
                message = await _next(queue, context)
                if message is None:
                    return
                await self._catalog.load([self._cache.get(watch.latest.firmware_id)])
                message.rollout.release.CopyFrom(self._catalog.of_rollout(watch.latest))
                yield message

    async def _control(
        self, context: Context, rollout_id: str, action: str, reason: str = "", wave: int = 0
    ) -> pb.Rollout:
        if not rollout_id:
            await context.abort(Status.INVALID_ARGUMENT, "rollout_id: required")
        if len(reason) > MAX_REASON_CHARS:
            await context.abort(
                Status.INVALID_ARGUMENT, f"reason: at most {MAX_REASON_CHARS} characters"
            )
        try:
            await self._engine.control(rollout_id, action, reason=reason, wave=wave or None)
        except RolloutControlError as exc:
            code = Status.NOT_FOUND if exc.code == "not_found" else Status.FAILED_PRECONDITION
            await context.abort(code, str(exc))
        return await self._message(self._engine.get(rollout_id), entries=False)

    async def PauseRollout(  # noqa: N802
        self, request: pb.PauseRolloutRequest, context: Context
    ) -> pb.PauseRolloutResponse:
        rollout = await self._control(context, request.rollout_id, "pause", request.reason)
        return pb.PauseRolloutResponse(rollout=rollout)

    async def ResumeRollout(  # noqa: N802
        self, request: pb.ResumeRolloutRequest, context: Context
    ) -> pb.ResumeRolloutResponse:
        rollout = await self._control(context, request.rollout_id, "resume", request.reason)
        return pb.ResumeRolloutResponse(rollout=rollout)

    async def AbortRollout(  # noqa: N802
        self, request: pb.AbortRolloutRequest, context: Context
    ) -> pb.AbortRolloutResponse:
        rollout = await self._control(context, request.rollout_id, "abort", request.reason)
        return pb.AbortRolloutResponse(rollout=rollout)

    async def ApproveWave(  # noqa: N802
        self, request: pb.ApproveWaveRequest, context: Context
    ) -> pb.ApproveWaveResponse:
        if request.wave == 0:
            await context.abort(
                Status.INVALID_ARGUMENT, "wave: required (the held wave, current + 1)"
            )
        rollout = await self._control(context, request.rollout_id, "approve", wave=request.wave)
        return pb.ApproveWaveResponse(rollout=rollout)

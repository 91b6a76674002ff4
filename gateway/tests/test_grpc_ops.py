"""``navign.gateway.v1`` on the gateway's real gRPC server (127.0.0.1, ephemeral port), called
through the generated client stubs, over a real database, beacon inventory, rollout engine and
firmware cache (signed releases seeded on disk, as a download would have left them).

Beacons are played by their §8.2 reports and BLE advertisements; a BLE push is played by
:class:`SteppedBle` (the test says what the beacon reports, step by step). The rollout engine is
stepped by the test on a clock the test drives; the API's own timing constants are shortened.
"""

# grpc_tools writes no .pyi for *_pb2_grpc modules: the stubs and their calls are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.duration_pb2 import Duration
from prometheus_client import CollectorRegistry

from navign_gateway import cli, grpc_ops, grpc_ops_streams
from navign_gateway.beacons import ONLINE_SECONDS, BeaconInventory
from navign_gateway.config import ConfigError, load_config
from navign_gateway.db import Database
from navign_gateway.firmware import FirmwareCache
from navign_gateway.firmware._release import MIGRATIONS, stamp
from navign_gateway.grpc_ops import AccessPolicy, WatchStreams, ops_servicers
from navign_gateway.grpc_ops_auth import token_digest
from navign_gateway.grpc_service import OrchestratorServicer, start_grpc_server, stop_grpc_server
from navign_gateway.robots import RobotRegistry
from navign_gateway.rollout import EntryState, PushResult, RolloutEngine
from navign_gateway.tasks import TaskEngine
from navign_gateway.upstream import Upstream
from navign_proto import keys
from navign_proto.grpc import task_pb2, task_pb2_grpc
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2_grpc as pb_grpc
from navign_proto.manifest import (
    FileEntry,
    ImageEntry,
    ReleaseManifest,
    envelope_bytes,
    format_time,
    sign_manifest,
)
from navign_proto.testing import OWN_SUBCHANNELS
from navign_proto.wire import FirmwareUpdateEvent

from .conftest import ENTITY, T0, Clock, Reporter, wait_until
from .test_rollout_engine import report

OPERATOR = "operator-token-for-the-tests-0001"
READER = "reader-token-for-the-tests-00001"
CALL_S = 5.0
APP_ID = "fw-esp32-app-1.1.0"
SERVICES = ("GatewayService", "BeaconService", "FirmwareService", "RolloutService")


# -- releases on disk ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    firmware_id: str
    target: str
    kind: str
    version: str
    cached_at: datetime
    min_previous: str | None = None
    size: int = 300


SEEDED = (
    Seeded(APP_ID, "esp32", "app", "1.1.0", datetime(2026, 1, 3, tzinfo=UTC)),
    Seeded(
        "fw-esp32-img-1.23.0",
        "esp32",
        "image",
        "1.23.0",
        datetime(2026, 1, 2, tzinfo=UTC),
        min_previous="1.22.0",
        size=500,
    ),
    Seeded("fw-c3-app-1.0.1", "esp32c3", "app", "1.0.1", datetime(2026, 1, 1, tzinfo=UTC)),
)


async def seed_release(db: Database, root: Path, key: ec.EllipticCurvePrivateKey, s: Seeded) -> str:
    """Files and row of a verified release, as FirmwareCache leaves them; its manifest SHA-256."""
    artifact = bytes([len(s.firmware_id)]) * s.size
    digest = hashlib.sha256(artifact).hexdigest()
    common: dict[str, Any] = {
        "name": "navign-beacon",
        "version": s.version,
        "secure_version": 1,
        "target": s.target,
        "kind": s.kind,
        "min_previous_version": s.min_previous,
        "created_at": format_time(s.cached_at),
    }
    if s.kind == "app":
        common["files"] = [FileEntry(path="main.mpy", size=s.size, sha256=digest)]
    else:
        common["image"] = ImageEntry(size=s.size, sha256=digest)
    manifest = ReleaseManifest.model_validate(common)
    directory = root / "releases" / s.firmware_id
    directory.mkdir(parents=True)
    (directory / "artifact.bin").write_bytes(artifact)
    (directory / "envelope.json").write_bytes(envelope_bytes(sign_manifest(manifest, [key])))
    manifest_sha256 = hashlib.sha256(manifest.to_bytes()).hexdigest()
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO firmware_releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (s.firmware_id, "navign-beacon", s.version, s.target, s.kind, 1, "beacon", "stable",
             s.size, digest, manifest_sha256, stamp(s.cached_at), stamp(s.cached_at), 1),
        )  # fmt: skip
    return manifest_sha256


class NoTokens:
    async def token(self) -> str:
        raise AssertionError("the cache must not reach the server in these tests")

    async def refresh(self, stale: str) -> str:
        raise AssertionError("the cache must not reach the server in these tests")


# -- beacons -------------------------------------------------------------------------------------


class SteppedBle:
    """A beacon's side of a BLE push, played step by step by the test."""

    def __init__(self) -> None:
        self.steps: asyncio.Queue[tuple[EntryState, int] | PushResult] = asyncio.Queue()

    async def push(self, address: str, release: Any, progress: Any) -> PushResult:
        while True:
            step = await self.steps.get()
            if isinstance(step, PushResult):
                return step
            progress(*step)

    async def play(self, step: tuple[EntryState, int] | PushResult) -> None:
        self.steps.put_nowait(step)
        await wait_until(self.steps.empty)


# -- the served API ------------------------------------------------------------------------------


@dataclass
class Ops:
    clock: Clock
    db: Database
    inventory: BeaconInventory
    cache: FirmwareCache
    engine: RolloutEngine
    ble: SteppedBle
    streams: WatchStreams
    channel: grpc.aio.Channel
    app_manifest: str
    status: dict[str, Any] = field(default_factory=dict)
    status_fails: bool = False

    @property
    def gateway(self) -> Any:
        return pb_grpc.GatewayServiceStub(self.channel)

    @property
    def beacons(self) -> Any:
        return pb_grpc.BeaconServiceStub(self.channel)

    @property
    def firmware(self) -> Any:
        return pb_grpc.FirmwareServiceStub(self.channel)

    @property
    def rollouts(self) -> Any:
        return pb_grpc.RolloutServiceStub(self.channel)

    async def report(self, beacon_id: str, **fields: Any) -> None:
        body = report(beacon_id, **fields)
        self.inventory.record_report(body)
        await self.engine.on_report(body)

    async def submit(self, policy: dict[str, Any], rollout_id: str = "fwa-1", seq: int = 1) -> None:
        event = FirmwareUpdateEvent.model_validate(
            {
                "firmware_id": APP_ID,
                "version": "1.1.0",
                "target": "esp32",
                "device_type": "beacon",
                "channel": "stable",
                "size_bytes": 300,
                "checksum": "sha256:" + "cd" * 32,
                "download_url": f"/api/firmware/{APP_ID}/download",
                "secure_version": 1,
                "kind": "app",
                "rollout_strategy": policy,
                "assignment_id": rollout_id,
            }
        )
        await self.engine.submit(event, seq)

    def result(self, outcome: str) -> dict[str, Any]:
        return {"kind": "app", "version": "1.1.0", "manifest_sha256": self.app_manifest,
                "outcome": outcome}  # fmt: skip

    async def update_wifi_beacon(self, beacon_id: str) -> None:
        """What the firmware does with an assignment, as its reports show it (§8.2)."""
        await self.report(beacon_id, ota_state="receiving")
        await self.report(beacon_id, ota_state="installing")
        await self.report(beacon_id, app_version="1.1.0", ota_state="trial", trial="app",
                          result=self.result("installed"))  # fmt: skip
        await self.report(beacon_id, app_version="1.1.0", result=self.result("committed"))

    async def provide_status(self) -> dict[str, Any]:
        if self.status_fails:
            raise OSError("disk unreadable")
        return copy.deepcopy(self.status)


def auth(token: str = OPERATOR) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, access: AccessPolicy | None = None) -> AsyncIterator[Ops]:
    clock = Clock()
    key = keys.generate_private_key()
    root = tmp_path / "firmware"
    async with Database(tmp_path / "gateway.sqlite3") as db, aiohttp.ClientSession() as session:
        await db.migrate("firmware", MIGRATIONS)
        manifests = [await seed_release(db, root, key, s) for s in SEEDED]
        upstream = Upstream(session, "http://127.0.0.1:9", ENTITY, "gw-1", NoTokens())
        cache = FirmwareCache(db, root, upstream, [key.public_key()], 10 * 1024 * 1024,
                              registry=CollectorRegistry())  # fmt: skip
        await cache.open()
        inventory = BeaconInventory(db, clock=clock)
        await inventory.open()
        ble = SteppedBle()
        engine = RolloutEngine(db, inventory, cache.get, ENTITY, ble=ble, clock=clock)
        await engine.open()
        robots = RobotRegistry(clock=clock)
        tasks = TaskEngine(db, robots, Reporter())
        await tasks.migrate()
        streams = WatchStreams()
        channel = grpc.aio.insecure_channel("127.0.0.1:0")  # replaced below
        ops = Ops(clock, db, inventory, cache, engine, ble, streams, channel, manifests[0])
        ops.status = {
            "gateway": "gw-1", "entity": ENTITY, "version": "0.1.0", "uptime_seconds": 5,
            "uplink": "CONNECTED", "refused": None, "sync": {"seq": 42, "last_success": T0},
            "checksum": "c-global", "checksums": {"areas": "c-areas"}, "local_copy": "ready",
        }  # fmt: skip
        registrations = ops_servicers(
            access=access or AccessPolicy([token_digest(OPERATOR)], [token_digest(READER)]),
            status=ops.provide_status,
            inventory=inventory,
            firmware=cache,
            rollouts=engine,
            streams=streams,
            clock=clock,
            max_concurrent=53,
        )
        orchestrator = OrchestratorServicer(robots, tasks)
        server, port = await start_grpc_server(
            "127.0.0.1:0", [orchestrator.register, *registrations]
        )
        await channel.close(None)
        ops.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[OWN_SUBCHANNELS])
        try:
            yield ops
        finally:
            for task in asyncio.all_tasks():
                if task.get_name().startswith("ble-push-"):
                    task.cancel()
            await ops.channel.close(None)
            await stop_grpc_server(server, None, end_streams=[streams.end_streams])


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_ops, "STATUS_POLL_SECONDS", 0.05)
    monkeypatch.setattr(grpc_ops_streams, "BEACON_COALESCE_SECONDS", 0.4)
    monkeypatch.setattr(grpc_ops, "LIVENESS_SWEEP_SECONDS", 0.2)
    monkeypatch.setattr(grpc_ops_streams, "ROLLOUT_PROGRESS_SECONDS", 0.4)


@pytest.fixture
async def ops(tmp_path: Path) -> AsyncIterator[Ops]:
    async with serving(tmp_path) as served:
        yield served


async def code_of(call: Any) -> grpc.StatusCode:
    code: grpc.StatusCode = await call.code()
    return code


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await call
    return excinfo.value.code(), excinfo.value.details() or ""


class Watcher:
    """Reads a server stream in the background, so that a test can wait for a message with a
    timeout without cancelling the call."""

    def __init__(self, call: Any, streams: WatchStreams) -> None:
        self.call = call
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.code: grpc.StatusCode | None = None
        self.task = asyncio.ensure_future(self._read())
        self._streams = streams

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for message in self.call:
                self.received.put_nowait(message)
        self.code = await self.call.code()
        self.received.put_nowait(None)

    async def next(self, within: float = CALL_S) -> Any:
        message = await asyncio.wait_for(self.received.get(), within)
        assert message is not None, f"the stream ended with {self.code}"
        return message

    async def quiet(self, seconds: float) -> None:
        """Nothing arrives for ``seconds``."""
        await asyncio.sleep(seconds)
        assert self.received.empty(), self.received.get_nowait()

    async def drain(self, seconds: float) -> list[Any]:
        """Everything that arrives in ``seconds``."""
        await asyncio.sleep(seconds)
        found = []
        while not self.received.empty():
            found.append(self.received.get_nowait())
        return found

    async def ended(self) -> grpc.StatusCode:
        async with asyncio.timeout(CALL_S):
            await self.task
        assert self.code is not None
        return self.code

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def watching(ops: Ops, call: Any) -> Watcher:
    """A watcher on ``call``, once the gateway counts the stream as open."""
    before = len(ops.streams)
    watcher = Watcher(call, ops.streams)
    await wait_until(lambda: len(ops.streams) > before or watcher.task.done())
    return watcher


# -- auth ----------------------------------------------------------------------------------------


def every_method() -> list[tuple[str, str, Any]]:
    return [
        (service, method.name, getattr(pb, method.input_type.name))
        for service in SERVICES
        for method in pb.DESCRIPTOR.services_by_name[service].methods
    ]


async def call_code(ops: Ops, service: str, method: str, request: Any, metadata: Any) -> Any:
    stub = getattr(pb_grpc, f"{service}Stub")(ops.channel)
    return await code_of(getattr(stub, method)(request, metadata=metadata, timeout=CALL_S))


async def test_every_call_needs_a_valid_bearer_token(ops: Ops) -> None:
    methods = every_method()
    assert len(methods) == 13
    for metadata in (
        None,
        auth("not-a-token-we-know-of-at-all"),
        (("authorization", f"Basic {OPERATOR}"),),
        (("authorization", "Bearer "),),
    ):
        for service, method, request in methods:
            code = await call_code(ops, service, method, request(), metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (service, method, metadata)
    call = ops.beacons.ListBeacons(pb.ListBeaconsRequest(), metadata=auth("wrong-one-0123456789"))
    assert await refused(call) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    # The scheme is case-insensitive (RFC 6750).
    response = await ops.beacons.ListBeacons(
        pb.ListBeaconsRequest(), metadata=(("authorization", f"bearer {READER}"),)
    )
    assert response.total_size == 0


async def test_a_reader_may_read_but_not_operate(ops: Ops) -> None:
    for service, method, request in every_method():
        if method.startswith("Watch"):
            continue
        code = await call_code(ops, service, method, request(), auth(READER))
        if method in grpc_ops.MUTATING:
            assert code == grpc.StatusCode.PERMISSION_DENIED, method
        else:
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), (method, code)
    call = ops.rollouts.PauseRollout(pb.PauseRolloutRequest(rollout_id="x"), metadata=auth())
    assert (await refused(call))[0] == grpc.StatusCode.NOT_FOUND  # an operator gets past auth


async def test_task_orchestrator_service_stays_without_auth(ops: Ops) -> None:
    stub = task_pb2_grpc.OrchestratorServiceStub(ops.channel)
    robot = task_pb2.RobotInfo(
        id="r-1", state=task_pb2.ROBOT_STATE_IDLE, battery_level=80, entity_id=ENTITY
    )
    response = await stub.ReportRobotStatus(
        task_pb2.RobotReportRequest(robot=robot), timeout=CALL_S
    )
    assert response.success


async def test_without_configured_tokens_every_call_is_refused_saying_how(tmp_path: Path) -> None:
    async with serving(tmp_path, AccessPolicy()) as ops:
        call = ops.gateway.GetStatus(pb.GetStatusRequest(), metadata=auth())
        code, details = await refused(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "operator_token_sha256" in details
        assert "token-hash" in details


def test_the_grpc_table_holds_digests_only(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    base = 'server_url = "https://navign.example"\nentity_id = "m"\norchestrator_id = "g"\n'
    digest = token_digest(OPERATOR)
    path.write_text(base + f'[grpc]\noperator_token_sha256 = ["{digest.upper()}"]\n')
    config = load_config(path, env={})
    assert config.grpc.operator_token_sha256 == [digest]
    assert AccessPolicy.from_config(config.grpc).role_of(OPERATOR) is not None
    assert AccessPolicy.from_config(config.grpc).role_of(READER) is None
    env = {"NAVIGN_GATEWAY_GRPC__READER_TOKEN_SHA256": f'["{token_digest(READER)}"]'}
    assert load_config(path, env=env).grpc.reader_token_sha256 == [token_digest(READER)]
    for table, problem in (
        (f'operator_token_sha256 = ["{OPERATOR}"]', "not a SHA-256"),
        (f'operator_token_sha256 = ["{digest}"]\nreader_token_sha256 = ["{digest}"]', "both"),
        (f'reader_token_sha256 = ["{token_digest("")}"]', "empty token"),
        (f'reader_token_sha256 = ["{digest}", "{digest}"]', "twice"),
    ):
        path.write_text(base + f"[grpc]\n{table}\n")
        with pytest.raises(ConfigError, match=problem):
            load_config(path, env={})


def test_token_hash_prints_the_digest_of_the_token_on_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(OPERATOR + "\n"))
    assert cli.main(["token-hash"]) == 0
    assert capsys.readouterr().out == token_digest(OPERATOR) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["token-hash"]) == cli.EXIT_CONFIG
    assert cli.main(["token-hash", "--generate"]) == 0
    lines = capsys.readouterr().out.split("\n")
    token, digest = lines[0].split()[1], lines[1].split()[1]
    assert digest == token_digest(token)


# -- beacons -------------------------------------------------------------------------------------


async def inventory_of_seven(ops: Ops) -> None:
    """b-01..b-07: esp32 except b-05/b-06 (esp32c3); b-02 on app 1.1.0; b-03 receiving on
    its own; b-04 offered by a rollout; b-06 heard over BLE; b-07 silent for too long."""
    ops.clock.advance(-(ONLINE_SECONDS + 10))
    ops.inventory.record_report(report("b-07"))
    ops.clock.advance(ONLINE_SECONDS + 10)
    for beacon_id in ("b-01", "b-04"):
        ops.inventory.record_report(report(beacon_id))
    ops.inventory.record_report(report("b-02", app_version="1.1.0"))
    ops.inventory.record_report(report("b-03", ota_state="receiving"))
    ops.inventory.record_report(report("b-05", chip="esp32c3", firmware_version="1.23.0"))
    ops.inventory.record_advertisement("b-06", "aa:bb:cc:00:00:06", None, -71)
    ops.inventory.record_report(report("b-06", chip="esp32c3"), transport="ble")
    ops.inventory.set_rollout("b-04", "fwa-9", "offered")


async def list_ids(ops: Ops, token: str = READER, **filters: Any) -> list[str]:
    response = await ops.beacons.ListBeacons(
        pb.ListBeaconsRequest(filter=pb.BeaconFilter(**filters)), metadata=auth(token)
    )
    assert response.total_size == len(response.beacons)
    return [b.beacon_id for b in response.beacons]


async def test_list_beacons_filters(ops: Ops) -> None:
    await inventory_of_seven(ops)
    assert await list_ids(ops) == [f"b-0{i}" for i in range(1, 8)]
    assert await list_ids(ops, chip_target="esp32c3") == ["b-05", "b-06"]
    assert await list_ids(ops, firmware_version="1.23.0") == ["b-05"]
    assert await list_ids(ops, app_version="1.1.0") == ["b-02"]
    assert await list_ids(ops, transport=pb.TRANSPORT_BLE) == ["b-06"]
    assert await list_ids(ops, online_only=True) == [f"b-0{i}" for i in range(1, 7)]
    assert await list_ids(ops, ota_states=[pb.OTA_STATE_TRANSFERRING]) == ["b-03"]
    assert await list_ids(ops, ota_states=[pb.OTA_STATE_OFFERED, pb.OTA_STATE_TRANSFERRING]) == [
        "b-03",
        "b-04",
    ]
    idle = await list_ids(ops, ota_states=[pb.OTA_STATE_IDLE], chip_target="esp32")
    assert idle == ["b-01", "b-02", "b-07"]
    beacon = (
        await ops.beacons.GetBeacon(pb.GetBeaconRequest(beacon_id="b-06"), metadata=auth(READER))
    ).beacon
    assert beacon.mac == "AA:BB:CC:00:00:06"
    assert beacon.chip_target == "esp32c3"
    assert beacon.rssi_dbm == -71
    assert beacon.transport == pb.TRANSPORT_BLE
    assert beacon.online
    assert beacon.last_seen.ToSeconds() == int(T0)
    b04 = (
        await ops.beacons.GetBeacon(pb.GetBeaconRequest(beacon_id="b-04"), metadata=auth())
    ).beacon
    assert (b04.ota_state, b04.rollout_id) == (pb.OTA_STATE_OFFERED, "fwa-9")
    assert not b04.HasField("rssi_dbm")
    call = ops.beacons.GetBeacon(pb.GetBeaconRequest(beacon_id="b-99"), metadata=auth())
    assert (await refused(call))[0] == grpc.StatusCode.NOT_FOUND


async def test_list_beacons_pages(ops: Ops) -> None:
    for i in range(1, 1006):
        ops.inventory.record_report(report(f"p-{i:04d}"))
    request = pb.ListBeaconsRequest(filter=pb.BeaconFilter(chip_target="esp32"))
    first = await ops.beacons.ListBeacons(request, metadata=auth())
    assert len(first.beacons) == 100  # page_size 0: the default
    assert first.total_size == 1005
    request.page_size = 5000
    capped = await ops.beacons.ListBeacons(request, metadata=auth())
    assert len(capped.beacons) == 1000
    request.page_token = capped.next_page_token
    rest = await ops.beacons.ListBeacons(request, metadata=auth())
    assert [b.beacon_id for b in rest.beacons] == [f"p-{i:04d}" for i in range(1001, 1006)]
    assert rest.next_page_token == ""
    # Page by page, 400 at a time: every beacon once, in order, even with one added between.
    request = pb.ListBeaconsRequest(filter=pb.BeaconFilter(chip_target="esp32"), page_size=400)
    seen: list[str] = []
    for _ in range(5):
        page = await ops.beacons.ListBeacons(request, metadata=auth())
        seen += [b.beacon_id for b in page.beacons]
        if len(seen) == 400:
            ops.inventory.record_report(report("p-0000"))  # sorts before the pages to come
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == [f"p-{i:04d}" for i in range(1, 1006)]
    # The token is bound to its filters.
    request.filter.chip_target = "esp32c3"
    code, details = await refused(ops.beacons.ListBeacons(request, metadata=auth()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in details
    request.filter.chip_target = "esp32"
    request.filter.ota_states.append(pb.OTA_STATE_IDLE)
    assert (await refused(ops.beacons.ListBeacons(request, metadata=auth())))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    request = pb.ListBeaconsRequest(page_token="bm90IGEgdG9rZW4")
    assert (await refused(ops.beacons.ListBeacons(request, metadata=auth())))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_watch_beacons_snapshot_then_changes(ops: Ops) -> None:
    ops.inventory.record_report(report("b-01"))
    ops.inventory.record_report(report("b-02", chip="esp32c3"))
    ops.inventory.record_report(report("b-03", firmware_version="1.21.0"))
    request = pb.WatchBeaconsRequest(
        filter=pb.BeaconFilter(chip_target="esp32", firmware_version="1.22.0")
    )
    watch = await watching(ops, ops.beacons.WatchBeacons(request, metadata=auth(READER)))
    first = await watch.next()
    assert (first.change, first.beacon.beacon_id) == (pb.BEACON_CHANGE_ADDED, "b-01")
    assert (await watch.next()).change == pb.BEACON_CHANGE_SNAPSHOT_END
    ops.inventory.record_report(report("b-02", chip="esp32c3", app_version="2.0.0"))  # silent
    ops.inventory.record_report(report("b-04"))
    added = await watch.next()
    assert (added.change, added.beacon.beacon_id) == (pb.BEACON_CHANGE_ADDED, "b-04")
    ops.inventory.record_report(report("b-03"))  # now on 1.22.0: matches
    assert (await watch.next()).beacon.beacon_id == "b-03"
    for beacon_id in ("b-01", "b-04"):  # heard over BLE: the MAC is news
        ops.inventory.record_advertisement(beacon_id, f"AA:00:00:00:00:{beacon_id[-2:]}", None, -59)
        heard = await watch.next()
        assert (heard.beacon.beacon_id, heard.beacon.mac) == (
            beacon_id,
            f"AA:00:00:00:00:{beacon_id[-2:]}",
        )
    await asyncio.sleep(0.5)
    ops.inventory.record_report(report("b-01", app_version="1.0.1"))
    updated = await watch.next()
    assert (updated.change, updated.beacon.app_version) == (pb.BEACON_CHANGE_UPDATED, "1.0.1")
    # RSSI and last-seen alone: at most one update per beacon per second (0.4 s here).
    for rssi in (-60, -61, -62, -63, -64):
        ops.clock.advance(1)
        ops.inventory.record_advertisement("b-01", "AA:00:00:00:00:01", None, rssi)
        ops.inventory.record_advertisement("b-04", "AA:00:00:00:00:04", None, rssi)
    burst = await watch.drain(1.0)
    b01 = [m for m in burst if m.beacon.beacon_id == "b-01"]
    b04 = [m for m in burst if m.beacon.beacon_id == "b-04"]
    assert [m.beacon.rssi_dbm for m in b01] == [-64]  # b-01 was told of just now: held
    assert [m.beacon.rssi_dbm for m in b04] == [-60, -64]  # b-04 0.5 s ago: the first goes
    assert all(m.change == pb.BEACON_CHANGE_UPDATED for m in burst)
    assert b01[0].beacon.last_seen.ToSeconds() == int(ops.clock.now)
    # A change that matters is not held back behind a held one.
    ops.inventory.record_advertisement("b-01", "AA:00:00:00:00:01", None, -49)
    assert (await watch.next()).beacon.rssi_dbm == -49  # 1 s after the last: at once
    ops.inventory.record_advertisement("b-01", "AA:00:00:00:00:01", None, -50)  # held
    ops.inventory.record_report(report("b-01", ota_state="verifying"))
    verifying = await watch.next()
    assert (verifying.beacon.ota_state, verifying.beacon.rssi_dbm) == (
        pb.OTA_STATE_VERIFYING,
        -50,
    )
    await watch.quiet(0.6)
    # A beacon that stops matching is REMOVED, with only its id.
    ops.inventory.record_report(report("b-04", firmware_version="1.23.0"))
    removed = await watch.next()
    assert removed.change == pb.BEACON_CHANGE_REMOVED
    assert removed.beacon == pb.Beacon(beacon_id="b-04")
    ops.inventory.record_report(report("b-04", firmware_version="1.23.1"))
    await watch.quiet(0.3)
    await watch.close()


async def test_watch_beacons_online_only_removes_a_beacon_gone_silent(ops: Ops) -> None:
    ops.inventory.record_report(report("b-01"))
    ops.clock.advance(60)
    ops.inventory.record_report(report("b-02"))
    request = pb.WatchBeaconsRequest(filter=pb.BeaconFilter(online_only=True))
    watch = await watching(ops, ops.beacons.WatchBeacons(request, metadata=auth()))
    assert [(await watch.next()).beacon.beacon_id for _ in range(2)] == ["b-01", "b-02"]
    assert (await watch.next()).change == pb.BEACON_CHANGE_SNAPSHOT_END
    ops.clock.advance(ONLINE_SECONDS - 30)  # b-01 heard 150 s ago, b-02 90 s ago
    removed = await watch.next()  # no inventory event: the liveness sweep finds it
    assert (removed.change, removed.beacon.beacon_id) == (pb.BEACON_CHANGE_REMOVED, "b-01")
    await watch.quiet(0.5)
    await watch.close()


async def test_a_watcher_that_falls_behind_is_dropped(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_ops_streams, "STREAM_QUEUE_MAX", 3)
    for i in range(10):  # the snapshot does not count against the queue
        ops.inventory.record_report(report(f"a-{i}"))
    watch = await watching(ops, ops.beacons.WatchBeacons(pb.WatchBeaconsRequest(), metadata=auth()))
    for _ in range(11):
        await watch.next()
    for i in range(10):  # ten changes at once, three may wait
        ops.inventory.record_report(report(f"b-{i}"))
    assert await watch.ended() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- firmware ------------------------------------------------------------------------------------


async def test_list_releases_newest_first_filtered_and_paged(ops: Ops) -> None:
    response = await ops.firmware.ListReleases(pb.ListReleasesRequest(), metadata=auth(READER))
    assert [r.release_id for r in response.releases] == [s.firmware_id for s in SEEDED]
    assert response.next_page_token == ""
    assert response.cache == pb.FirmwareCacheUsage(
        used_bytes=1100, capacity_bytes=10 * 1024 * 1024, release_count=3
    )
    image = response.releases[1]
    assert (image.name, image.version, image.target) == ("navign-beacon", "1.23.0", "esp32")
    assert (image.kind, image.size_bytes, image.secure_version) == (pb.FIRMWARE_KIND_IMAGE, 500, 1)
    assert image.verified
    assert image.min_previous_version == "1.22.0"
    assert response.releases[0].min_previous_version == ""
    assert image.cached_at.ToDatetime(tzinfo=UTC) == SEEDED[1].cached_at
    assert image.manifest_sha256 == ops.cache.get(image.release_id).manifest_sha256  # type: ignore[union-attr]

    async def ids(**fields: Any) -> list[str]:
        request = pb.ListReleasesRequest(**fields)
        found = await ops.firmware.ListReleases(request, metadata=auth(READER))
        return [r.release_id for r in found.releases]

    assert await ids(target="esp32c3") == ["fw-c3-app-1.0.1"]
    assert await ids(kind=pb.FIRMWARE_KIND_APP) == [APP_ID, "fw-c3-app-1.0.1"]
    assert await ids(target="esp32", kind=pb.FIRMWARE_KIND_IMAGE) == ["fw-esp32-img-1.23.0"]
    request = pb.ListReleasesRequest(kind=pb.FIRMWARE_KIND_APP, page_size=1)
    first = await ops.firmware.ListReleases(request, metadata=auth())
    request.page_token = first.next_page_token
    second = await ops.firmware.ListReleases(request, metadata=auth())
    assert [r.release_id for r in [*first.releases, *second.releases]] == [
        APP_ID,
        "fw-c3-app-1.0.1",
    ]
    assert second.next_page_token == ""
    request.kind = pb.FIRMWARE_KIND_IMAGE
    code, _ = await refused(ops.firmware.ListReleases(request, metadata=auth()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # A token of another listing is not one of this.
    beacons = pb.ListBeaconsRequest(page_token=first.next_page_token)
    assert (await refused(ops.beacons.ListBeacons(beacons, metadata=auth())))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


# -- rollouts ------------------------------------------------------------------------------------


async def get_rollout(ops: Ops, rollout_id: str = "fwa-1") -> pb.Rollout:
    response = await ops.rollouts.GetRollout(
        pb.GetRolloutRequest(rollout_id=rollout_id), metadata=auth(READER)
    )
    rollout: pb.Rollout = response.rollout
    return rollout


async def test_watch_rollout_from_snapshot_to_completed(ops: Ops) -> None:
    for beacon_id in ("b-01", "b-02"):
        await ops.report(beacon_id)
    await ops.submit({"canary_size": {"count": 1}, "manual_approval": True})
    await ops.engine.step()
    full = await get_rollout(ops)
    assert full.state == pb.ROLLOUT_STATE_RUNNING
    assert [(b.beacon_id, b.wave) for b in full.beacons] in (
        [("b-01", 1), ("b-02", 2)],
        [("b-01", 2), ("b-02", 1)],
    )
    canary = next(b.beacon_id for b in full.beacons if b.wave == 1)
    other = next(b.beacon_id for b in full.beacons if b.wave == 2)
    assert full.policy == pb.RolloutPolicy(
        wave_count=2, max_concurrent=53, max_failure_ratio=0.2, manual_approval=True,
        max_attempts=3, summary=full.policy.summary,
    )  # fmt: skip
    assert "manual approval" in full.policy.summary
    assert (full.release.release_id, full.release.verified) == (APP_ID, True)
    assert full.counts == pb.RolloutCounts(total=2, pending=1, offered=1)

    call = ops.rollouts.WatchRollout(pb.WatchRolloutRequest(rollout_id="fwa-1"), metadata=auth())
    watch = await watching(ops, call)
    snapshot = await watch.next()
    assert snapshot.rollout == full
    assert list(snapshot.changed_beacons) == []

    await ops.report(canary, ota_state="receiving")
    change = await watch.next()
    assert list(change.rollout.beacons) == []
    assert [(b.beacon_id, b.state) for b in change.changed_beacons] == [
        (canary, pb.OTA_STATE_TRANSFERRING)
    ]
    assert change.rollout.counts == pb.RolloutCounts(total=2, pending=1, transferring=1)
    assert change.rollout.release == full.release
    await ops.update_wifi_beacon(canary)
    states = [
        [(b.beacon_id, b.state) for b in (await watch.next()).changed_beacons] for _ in range(3)
    ]
    assert states == [
        [(canary, pb.OTA_STATE_INSTALLING)],
        [(canary, pb.OTA_STATE_REBOOTING)],
        [(canary, pb.OTA_STATE_CONFIRMED)],
    ]
    await ops.engine.step()
    held = await watch.next()
    assert (held.rollout.state, held.rollout.current_wave) == (pb.ROLLOUT_STATE_HOLDING, 1)
    assert list(held.changed_beacons) == []

    approve = pb.ApproveWaveRequest(rollout_id="fwa-1", wave=2)
    approved = (await ops.rollouts.ApproveWave(approve, metadata=auth())).rollout
    assert (approved.state, approved.current_wave) == (pb.ROLLOUT_STATE_RUNNING, 2)
    assert list(approved.beacons) == []
    assert approved.counts.confirmed == 1
    assert (await watch.next()).rollout.state == pb.ROLLOUT_STATE_RUNNING
    await ops.engine.step()
    offered = await watch.next()
    assert [(b.beacon_id, b.state) for b in offered.changed_beacons] == [
        (other, pb.OTA_STATE_OFFERED)
    ]
    await ops.report(other, ota_state="receiving")
    await ops.update_wifi_beacon(other)
    await ops.engine.step()
    rest = []
    while True:
        message = await asyncio.wait_for(watch.received.get(), CALL_S)
        if message is None:
            break
        rest.append(message)
    assert rest[-1].rollout.state == pb.ROLLOUT_STATE_COMPLETED
    assert rest[-1].rollout.counts == pb.RolloutCounts(total=2, confirmed=2)
    assert rest[-1].rollout.state_reason == "2 of 2 confirmed"
    assert watch.code == grpc.StatusCode.OK

    # A finished rollout: its snapshot, then OK.
    again = await watching(ops, ops.rollouts.WatchRollout(
        pb.WatchRolloutRequest(rollout_id="fwa-1"), metadata=auth()))  # fmt: skip
    assert (await again.next()).rollout.state == pb.ROLLOUT_STATE_COMPLETED
    assert await again.ended() == grpc.StatusCode.OK
    missing = ops.rollouts.WatchRollout(pb.WatchRolloutRequest(rollout_id="nope"), metadata=auth())
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND


async def test_watch_rollout_coalesces_progress_and_ends_at_abort(ops: Ops) -> None:
    ops.inventory.record_advertisement("b-01", "AA:00:00:00:00:01", None, -60)
    ops.inventory.record_report(report("b-01"), transport="ble")
    await ops.submit({"canary_size": {"percent": 100}})
    await ops.engine.step()
    assert (await get_rollout(ops)).beacons[0].state == pb.OTA_STATE_OFFERED
    call = ops.rollouts.WatchRollout(pb.WatchRolloutRequest(rollout_id="fwa-1"), metadata=auth())
    watch = await watching(ops, call)
    await watch.next()
    await ops.ble.play((EntryState.TRANSFERRING, 0))
    await ops.engine.step()
    moved = (await watch.next()).changed_beacons
    assert [(b.state, b.bytes_transferred) for b in moved] == [(pb.OTA_STATE_TRANSFERRING, 0)]
    for sent in (60, 120, 180, 240):  # each saved (the engine's own limit is on its clock)
        ops.clock.advance(3)
        await ops.ble.play((EntryState.TRANSFERRING, sent))
        await ops.engine.step()
    progress = await watch.drain(0.8)
    assert [[b.bytes_transferred for b in m.changed_beacons] for m in progress] == [[240]]
    assert progress[0].rollout.state == pb.ROLLOUT_STATE_RUNNING
    assert progress[0].changed_beacons[0].state == pb.OTA_STATE_TRANSFERRING
    ops.clock.advance(3)
    await ops.ble.play((EntryState.TRANSFERRING, 300))
    await ops.engine.step()
    assert [b.bytes_transferred for b in (await watch.next()).changed_beacons] == [300]

    abort = pb.AbortRolloutRequest(rollout_id="fwa-1", reason="wrong build")
    aborted = (await ops.rollouts.AbortRollout(abort, metadata=auth())).rollout
    assert (aborted.state, aborted.state_reason) == (pb.ROLLOUT_STATE_ABORTED, "wrong build")
    last = await watch.next()
    assert (last.rollout.state, last.rollout.state_reason) == (
        pb.ROLLOUT_STATE_ABORTED,
        "wrong build",
    )
    assert await watch.ended() == grpc.StatusCode.OK
    # The beacon already transferring finishes (§7.2), the stream is over.
    await ops.ble.play(PushResult("committed"))
    await wait_until(lambda: ops.engine.get("fwa-1").entries["b-01"].state.value == "confirmed")


async def test_rollout_control_calls(ops: Ops) -> None:
    for beacon_id in ("b-01", "b-02", "b-03"):
        await ops.report(beacon_id)
    await ops.submit({"canary_size": {"count": 1}})
    await ops.engine.step()
    stub = ops.rollouts

    async def control(method: str, **fields: Any) -> pb.Rollout:
        request = getattr(pb, f"{method}Request")(rollout_id="fwa-1", **fields)
        response = await getattr(stub, method)(request, metadata=auth())
        assert list(response.rollout.beacons) == []
        rollout: pb.Rollout = response.rollout
        return rollout

    async def refusal(method: str, rollout_id: str = "fwa-1", **fields: Any) -> grpc.StatusCode:
        request = getattr(pb, f"{method}Request")(rollout_id=rollout_id, **fields)
        return (await refused(getattr(stub, method)(request, metadata=auth())))[0]

    assert await refusal("ApproveWave", wave=2) == grpc.StatusCode.FAILED_PRECONDITION
    assert await refusal("ApproveWave") == grpc.StatusCode.INVALID_ARGUMENT
    assert await refusal("PauseRollout", rollout_id="") == grpc.StatusCode.INVALID_ARGUMENT
    assert await refusal("PauseRollout", reason="x" * 1001) == grpc.StatusCode.INVALID_ARGUMENT
    resumed = await control("ResumeRollout")  # already running: nothing to do
    assert resumed.state == pb.ROLLOUT_STATE_RUNNING
    paused = await control("PauseRollout", reason="lunch rush")
    assert (paused.state, paused.state_reason) == (pb.ROLLOUT_STATE_PAUSED, "lunch rush")
    assert paused.counts == pb.RolloutCounts(total=3, pending=2, offered=1)
    assert paused.release.release_id == APP_ID
    again = await control("PauseRollout", reason="again")
    assert (again.state, again.state_reason) == (pb.ROLLOUT_STATE_PAUSED, "lunch rush")
    assert (await control("ResumeRollout", reason="rush over")).state == pb.ROLLOUT_STATE_RUNNING
    assert (await control("AbortRollout")).state == pb.ROLLOUT_STATE_ABORTED
    assert (await control("AbortRollout")).state == pb.ROLLOUT_STATE_ABORTED
    for method in ("PauseRollout", "ResumeRollout"):
        assert await refusal(method) == grpc.StatusCode.FAILED_PRECONDITION
    for method, fields in (("PauseRollout", {}), ("ResumeRollout", {}), ("AbortRollout", {}),
                           ("ApproveWave", {"wave": 2})):  # fmt: skip
        assert await refusal(method, rollout_id="nope", **fields) == grpc.StatusCode.NOT_FOUND
    call = ops.rollouts.GetRollout(pb.GetRolloutRequest(rollout_id="nope"), metadata=auth())
    assert (await refused(call))[0] == grpc.StatusCode.NOT_FOUND


async def test_list_rollouts_newest_first_by_state_and_paged(ops: Ops) -> None:
    await ops.report("b-01")
    for seq in (1, 2, 3):
        await ops.submit({}, rollout_id=f"fwa-{seq}", seq=seq)
    await ops.engine.step()
    await ops.engine.control("fwa-1", "abort")

    async def listed(**fields: Any) -> pb.ListRolloutsResponse:
        request = pb.ListRolloutsRequest(**fields)
        response: pb.ListRolloutsResponse = await ops.rollouts.ListRollouts(
            request, metadata=auth(READER)
        )
        return response

    everything = await listed()
    assert [r.rollout_id for r in everything.rollouts] == ["fwa-3", "fwa-2", "fwa-1"]
    assert all(not r.beacons for r in everything.rollouts)
    # fwa-3 superseded fwa-2 (same target); fwa-1 was aborted by hand.
    assert [r.state.value for r in ops.engine.rollouts()] == ["running", "aborted", "aborted"]
    aborted = await listed(states=[pb.ROLLOUT_STATE_ABORTED])
    assert [r.rollout_id for r in aborted.rollouts] == ["fwa-2", "fwa-1"]
    either = await listed(states=[pb.ROLLOUT_STATE_RUNNING, pb.ROLLOUT_STATE_PAUSED])
    assert [r.rollout_id for r in either.rollouts] == ["fwa-3"]
    assert either.rollouts[0].counts == pb.RolloutCounts(total=1, pending=1)
    first = await listed(page_size=2)
    assert [r.rollout_id for r in first.rollouts] == ["fwa-3", "fwa-2"]
    second = await listed(page_size=2, page_token=first.next_page_token)
    assert [r.rollout_id for r in second.rollouts] == ["fwa-1"]
    assert second.next_page_token == ""
    request = pb.ListRolloutsRequest(
        states=[pb.ROLLOUT_STATE_RUNNING], page_token=first.next_page_token
    )
    code, _ = await refused(ops.rollouts.ListRollouts(request, metadata=auth()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- gateway status ------------------------------------------------------------------------------


async def test_get_status(ops: Ops) -> None:
    status = (await ops.gateway.GetStatus(pb.GetStatusRequest(), metadata=auth(READER))).status
    assert (status.gateway_id, status.entity_id, status.version) == ("gw-1", ENTITY, "0.1.0")
    assert status.uptime.ToSeconds() == 5
    assert (status.uplink_state, status.uplink_detail) == (pb.UPLINK_STATE_CONNECTED, "")
    assert status.last_sync_time.ToSeconds() == int(T0)
    assert status.last_sync_sequence == 42
    assert status.checksums.global_checksum == "c-global"
    assert dict(status.checksums.collections) == {"areas": "c-areas"}
    assert status.firmware_cache.release_count == 3
    ops.status.update(uplink="REFUSED", refused="revoked", sync={"seq": None, "last_success": None})
    status = (await ops.gateway.GetStatus(pb.GetStatusRequest(), metadata=auth())).status
    assert (status.uplink_state, status.uplink_detail) == (pb.UPLINK_STATE_REFUSED, "revoked")
    assert not status.HasField("last_sync_time")
    assert status.last_sync_sequence == 0
    ops.status_fails = True
    call = ops.gateway.GetStatus(pb.GetStatusRequest(), metadata=auth())
    assert (await refused(call))[0] == grpc.StatusCode.UNAVAILABLE


async def test_watch_status_sends_changes_not_uptime_at_most_once_per_interval(ops: Ops) -> None:
    request = pb.WatchStatusRequest(min_interval=Duration(nanos=300_000_000))
    watch = await watching(ops, ops.gateway.WatchStatus(request, metadata=auth(READER)))
    loop = asyncio.get_running_loop()
    first = await watch.next()
    assert first.status.uplink_state == pb.UPLINK_STATE_CONNECTED
    ops.status["uptime_seconds"] = 99
    await watch.quiet(0.7)  # two polls: only the uptime changed
    ops.status["uplink"] = "OFFLINE"
    offline = await watch.next()
    at = loop.time()
    assert (offline.status.uplink_state, offline.status.uptime.ToSeconds()) == (
        pb.UPLINK_STATE_OFFLINE,
        99,
    )
    ops.status["uplink"] = "CONNECTING"
    connecting = await watch.next()
    assert connecting.status.uplink_state == pb.UPLINK_STATE_CONNECTING
    assert loop.time() - at >= 0.25
    await watch.close()
    negative = pb.WatchStatusRequest(min_interval=Duration(seconds=-1))
    call = ops.gateway.WatchStatus(negative, metadata=auth())
    assert await code_of(call) == grpc.StatusCode.INVALID_ARGUMENT


async def test_stopping_ends_every_stream_with_ok(ops: Ops) -> None:
    await ops.report("b-01")
    await ops.submit({})
    watches = [
        await watching(ops, ops.gateway.WatchStatus(pb.WatchStatusRequest(), metadata=auth())),
        await watching(ops, ops.beacons.WatchBeacons(pb.WatchBeaconsRequest(), metadata=auth())),
        await watching(
            ops,
            ops.rollouts.WatchRollout(pb.WatchRolloutRequest(rollout_id="fwa-1"), metadata=auth()),
        ),
    ]
    for watch in watches:
        await watch.next()
    assert len(ops.streams) == 3
    ops.streams.end_streams()
    for watch in watches:
        assert await watch.ended() == grpc.StatusCode.OK
    late = ops.beacons.WatchBeacons(pb.WatchBeaconsRequest(), metadata=auth())
    async with asyncio.timeout(CALL_S):  # a snapshot, then the end
        assert [m.change async for m in late] == [
            pb.BEACON_CHANGE_ADDED,
            pb.BEACON_CHANGE_SNAPSHOT_END,
        ]
    assert await code_of(late) == grpc.StatusCode.OK

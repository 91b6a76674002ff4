"""``navign-gateway run``: every part of the gateway in one process, started and stopped in order.

Start (each step needs the previous one):
 1. the data directory, the identity key (created on first start), the database;
 2. the offline mall copy, the firmware cache, the robots and tasks: all from the database, so
    the gateway serves the mall at once, even when the server is unreachable;
 3. the HTTP port (local read API, verified firmware, /healthz, /metrics) and the gRPC port
    (robots via the tower);
 4. the uplink (registration, sync, events), the heartbeat, the task-report flusher;
 5. READY=1 to systemd, then WATCHDOG=1 while the event loop is alive.

Stop (SIGTERM): STOPPING=1, the uplink and the periodic tasks end, the ports close with a short
grace, the database closes last. The whole stop is bounded by :data:`STOP_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import signal
import ssl
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from navign_gateway import __version__
from navign_gateway.backoff import Backoff, FailureLog
from navign_gateway.beacon_http import add_beacon_routes
from navign_gateway.beacons import BeaconInventory, BeaconRecord
from navign_gateway.config import ConfigError, GatewayConfig, is_loopback
from navign_gateway.credentials import Credentials
from navign_gateway.db import Database
from navign_gateway.firmware import (
    CacheBudgetError,
    DiskFullError,
    FirmwareCache,
    FirmwareCacheError,
    FirmwareRejected,
)
from navign_gateway.firmware_http import add_firmware_routes
from navign_gateway.grpc_ops import AccessPolicy, WatchStreams, ops_servicers
from navign_gateway.grpc_service import (
    OrchestratorServicer,
    start_grpc_server,
    stop_grpc_server,
)
from navign_gateway.grpc_tls import ServerTls
from navign_gateway.hostmetrics import HostMetrics
from navign_gateway.identity import Identity, create_identity, load_identity
from navign_gateway.localapi import add_local_api
from navign_gateway.mallcopy import MallCopy, MallCopyError
from navign_gateway.memory import release_memory
from navign_gateway.robots import InvalidSelectionConfigError, RobotRegistry
from navign_gateway.rollout import (
    Entry,
    ReportSender,
    Rollout,
    RolloutControlError,
    RolloutEngine,
)
from navign_gateway.sdnotify import Notifier, watchdog_period
from navign_gateway.sync import SyncEngine
from navign_gateway.tasks import TaskEngine
from navign_gateway.uplink import Uplink, UplinkState
from navign_gateway.upstream import Upstream, UpstreamError, raise_for_error
from navign_proto.wire import (
    BeaconStatus,
    BeaconStatusReport,
    CommandType,
    ConfigUpdateEvent,
    DataUpdateEvent,
    FirmwareInfo,
    FirmwareUpdateEvent,
    GatewayStatus,
    HeartbeatMetrics,
    HeartbeatRequest,
    HeartbeatResponse,
    OtaState,
    ResyncRequiredEvent,
    TaskCreateEvent,
    TaskStatusReport,
)

if TYPE_CHECKING:
    from navign_gateway.ble.push import BleCentral

log = logging.getLogger(__name__)

STOP_SECONDS = 5.0
HEARTBEAT_PATH = "/api/orchestrators/heartbeat"
BEACON_REPORT_PATH = "/api/orchestrators/reports/beacons"
#: The inventory's changes go to the server this often (in batches of at most 1,000).
BEACON_REPORT_SECONDS = 15.0
BEACON_BATCH_MAX = 1000
#: Beacons fetching a release over Wi-Fi at once (the gateway's HTTP port serves them).
WIFI_CONCURRENCY = 50
TASK_REPORT_PATH = "/api/orchestrators/reports/tasks"
STATE_EXECUTED_COMMANDS = "heartbeat.executed_commands"
#: Executed command ids remembered, so a lost acknowledgement never repeats one (§3.7).
REMEMBERED_COMMANDS = 200
#: Server commands acting on a rollout (§3.7), and the engine's action for each.
ROLLOUT_COMMANDS: Final[dict[str, str]] = {
    CommandType.ROLLOUT_PAUSE: "pause",
    CommandType.ROLLOUT_RESUME: "resume",
    CommandType.ROLLOUT_ABORT: "abort",
    CommandType.ROLLOUT_APPROVE: "approve",
}
#: Exit code asking systemd (Restart=always) to start the gateway again.
EXIT_RESTART = 75


def client_ssl(config: GatewayConfig) -> ssl.SSLContext:
    """TLS to the server, always verified: against the configured CA bundle (a private CA),
    else the system's trust store. There is no switch to turn verification off."""
    if config.ca_bundle is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(config.ca_bundle))


def _reported_fields(record: BeaconRecord) -> tuple[object, ...]:
    return (
        record.mac,
        record.firmware_version,
        record.app_version,
        record.ota_state,
        record.rollout_state,
        record.transport,
    )


def _beacon_status(record: BeaconRecord) -> BeaconStatus:
    """An inventory record as the server's beacon status (§3.16): the rollout state while a
    rollout updates the beacon, else ``idle``."""
    rssi = record.rssi if record.rssi is not None and -127 <= record.rssi <= 20 else None
    return BeaconStatus(
        beacon_id=record.beacon_id,
        mac=record.mac,
        firmware_version=record.firmware_version,
        app_version=record.app_version,
        ota_state=OtaState(record.rollout_state) if record.rollout_state else OtaState.IDLE,
        rssi=rssi,
        last_seen=datetime.fromtimestamp(record.last_seen, UTC),
    )


class RestartRequestedError(Exception):
    """The server's heartbeat asked for a restart."""


class ServerTaskReporter:
    """Task status reports go to the server (the task engine keeps an outbox when this fails)."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    async def report_task(self, report: TaskStatusReport) -> None:
        body = report.model_dump(mode="json", by_alias=True, exclude_none=True)
        async with self._upstream.request("POST", TASK_REPORT_PATH, json_body=body) as response:
            await raise_for_error(response)


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        config_path: Path | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.registry = registry if registry is not None else CollectorRegistry()
        self.started_at = time.monotonic()
        self.notifier = Notifier.from_environment()
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self.exit_code = 0
        self.http_port = 0
        self.grpc_port = 0
        self.grpc_tls: ServerTls | None = None
        self._heartbeat_failures = FailureLog(log, "heartbeat")
        self._beacon_reported_at: dict[str, float] = {}
        self._uplink_state = Gauge(
            "orchestrator_uplink_state",
            "1 for the uplink's current state",
            ["state"],
            registry=self.registry,
        )

    # -- start ----------------------------------------------------------------------------

    def _identity(self) -> Identity:
        path = self.config.identity_key_path
        if not path.exists():
            identity = create_identity(path)
            log.info("created identity key %s (fingerprint %s)", path, identity.fingerprint)
            return identity
        return load_identity(path)

    async def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        identity = self._identity()
        self.db = Database(config.data_dir / "gateway.sqlite3")
        await self.db.open()
        self._stack.push_async_callback(self.db.close)
        self.copy = MallCopy(self.db, config.entity_id)
        await self.copy.migrate()

        connector = aiohttp.TCPConnector(ssl=client_ssl(config), limit=16)
        self.session = aiohttp.ClientSession(connector=connector)
        self._stack.push_async_callback(self.session.close)
        self.credentials = Credentials(
            session=self.session,
            config=config,
            identity=identity,
            db=self.db,
            version=__version__,
            config_path=self.config_path,
        )
        await self.credentials.load()
        self.upstream = Upstream(
            self.session,
            config.server_url,
            config.entity_id,
            config.orchestrator_id,
            self.credentials,
        )
        self.sync = SyncEngine(self.upstream, self.copy, registry=self.registry)

        release_keys = config.firmware.release_keys()
        self.firmware = FirmwareCache(
            self.db,
            config.data_dir / "firmware",
            self.upstream,
            release_keys,
            config.firmware.cache_budget_mb * 1024 * 1024,
            registry=self.registry,
        )
        await self.firmware.open()

        self.inventory = BeaconInventory(self.db)
        await self.inventory.open()
        self._beacons_to_report: set[str] = {r.beacon_id for r in self.inventory.all()}
        self.inventory.subscribe(self._beacon_changed)
        await self._load_mall_beacons()
        # The Bluetooth and mDNS libraries are imported only when switched on: a gateway without
        # them does not carry them in memory (docs/benchmarks.md, the gateway's idle memory).
        self.ble = self._ble_central() if config.ble.enabled else None
        pusher = None
        if self.ble is not None:
            from navign_gateway.ble.push import BlePusher

            pusher = BlePusher(self.ble)
        self.rollouts = RolloutEngine(
            self.db,
            self.inventory,
            self.firmware.get,
            config.entity_id,
            ble=pusher,
            wifi_concurrency=WIFI_CONCURRENCY,
            ble_concurrency=config.ble.max_connections,
        )
        await self.rollouts.open()
        self.rollouts.subscribe(self._rollout_changed)
        await self._unpin_finished_releases()
        self.reports = ReportSender(self.db, self._post_report)
        self.rollouts.on_outbox = self.reports.wake

        self.robots = RobotRegistry()
        self.tasks = TaskEngine(self.db, self.robots, ServerTaskReporter(self.upstream))
        await self.tasks.migrate()
        self.host = HostMetrics(config.data_dir)

        await self._start_http()
        self._announce_firmware()
        servicer = OrchestratorServicer(self.robots, self.tasks)
        streams = WatchStreams()
        ops = ops_servicers(
            access=AccessPolicy.from_config(config.grpc),
            status=self.status,
            inventory=self.inventory,
            firmware=self.firmware,
            rollouts=self.rollouts,
            streams=streams,
            max_concurrent=WIFI_CONCURRENCY + config.ble.max_connections,
        )
        self.grpc_tls = self._grpc_tls()
        server, self.grpc_port = await start_grpc_server(
            config.listen.grpc,
            [servicer.register, *ops],
            tls=self.grpc_tls.context if self.grpc_tls else None,
        )
        self.grpc_server = server
        # Towers see their streams end with OK, not CANCELLED.
        self._stack.push_async_callback(
            stop_grpc_server, server, 1.0, end_streams=[servicer.end_streams, streams.end_streams]
        )

        self.uplink = Uplink(
            upstream=self.upstream,
            credentials=self.credentials,
            db=self.db,
            sync=self.sync,
            handlers={
                "data_update": self._on_data_update,
                "resync_required": self._on_resync,
                "firmware_update": self._on_firmware_update,
                "task_create": self._on_task_create,
                "config_update": self._on_config_update,
            },
            registry=self.registry,
            on_state=self._on_uplink_state,
        )
        self._on_uplink_state(self.uplink.state)
        # Check the copy against itself first (after READY: it reads every row), then connect.
        self._spawn(self._verify_then_connect(), "uplink")
        self._spawn(self._heartbeat_loop(), "heartbeat")
        self._spawn(self.tasks.run(), "tasks")
        self._spawn(self.rollouts.run(), "rollouts")
        self._spawn(self.inventory.run_flusher(), "inventory")
        if self.grpc_tls is not None:
            self._spawn(self.grpc_tls.run(), "grpc-tls")
        self._spawn(self._follow_mall_beacons(), "mall-beacons")
        self._spawn(self._report_beacons(), "beacon-reports")
        if self.ble is not None:
            from navign_gateway.ble.scan import BeaconScanner

            self._spawn(BeaconScanner(self.ble, self.inventory).run(), "ble-scan")
            if config.ble.advertise and config.ble.backend == "bluez":
                await self._advertise_releases()
        self._spawn(self.reports.run(), "rollout-reports")
        period = watchdog_period()
        if period is not None:
            self._spawn(self._watchdog(period), "watchdog")
        self.notifier.ready(status=f"serving {config.entity_id}")
        log.info(
            "gateway %s of %s ready: http :%d, grpc :%d",
            config.orchestrator_id,
            config.entity_id,
            self.http_port,
            self.grpc_port,
        )

    async def _verify_then_connect(self) -> None:
        await asyncio.sleep(0)  # let start() finish and READY=1 go out first
        await self.sync.verify_local()
        release_memory()  # verification read every row
        await self.uplink.run()

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        add_local_api(app, self.copy)
        add_firmware_routes(app, self.firmware)
        add_beacon_routes(app, self.inventory, self.rollouts.on_report)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        host, _, port = self.config.listen.http.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else int(port)

    def _announce_firmware(self) -> None:
        """mDNS (protocol §8.3): beacons find the HTTP port and the releases held here. It runs
        in the background; a failure is logged and never stops the gateway. Withdrawn (goodbye
        packets) before the HTTP port closes."""
        mdns = self.config.mdns
        if not mdns.enabled:
            return
        from navign_gateway.announce import FirmwareAnnouncer

        announcer = FirmwareAnnouncer(
            self.firmware,
            port=self.http_port,
            orchestrator_id=self.config.orchestrator_id,
            entity_id=self.config.entity_id,
            instance=mdns.instance,
            interfaces=mdns.interfaces,
        )
        self._stack.push_async_callback(announcer.stop)
        announcer.start()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, RestartRequestedError):
            log.warning("restart requested by the server")
            self.exit_code = EXIT_RESTART
            self.request_stop()
        elif exc is not None:
            log.error("%s stopped: %r", task.get_name(), exc, exc_info=exc)

    def _on_uplink_state(self, state: UplinkState) -> None:
        for each in UplinkState:
            self._uplink_state.labels(each.value).set(1 if each is state else 0)
        self.notifier.status(f"uplink {state.value.lower()}")

    # -- event handlers (idempotent: events can be replayed) --------------------------------

    async def _on_data_update(self, event: DataUpdateEvent) -> None:
        await self.sync.catch_up(event.seq)
        if event.changes.beacons:
            await self._load_mall_beacons()

    async def _on_resync(self, event: ResyncRequiredEvent) -> None:
        collections = None if event.collections == "all" else list(event.collections)
        result = await self.sync.full(collections)
        await self.uplink.reset_event_cursor(result.seq)
        await self._load_mall_beacons()

    async def _advertise_releases(self) -> None:
        """BLE advertising of the latest release per target (§8.7) through BlueZ; it retries
        by itself while BlueZ is absent, and follows the firmware cache."""
        from navign_gateway.ble.advertise import ReleaseAdvertiser, advertised_releases

        advertiser = ReleaseAdvertiser(self.config.ble.adapter)
        await advertiser.start()
        self._stack.push_async_callback(advertiser.stop)
        changed = asyncio.Event()
        self.firmware.add_listener(changed.set)

        async def follow() -> None:
            while True:
                await advertiser.update(advertised_releases(self.firmware.list()))
                await changed.wait()
                changed.clear()

        self._spawn(follow(), "ble-advertise")

    def _rollout_changed(self, rollout: Rollout, _entries: list[Entry]) -> None:
        if rollout.terminal:
            self._background_task(self._unpin_finished_releases(), "firmware-unpin")

    async def _unpin_finished_releases(self) -> None:
        """A release stays pinned in the cache (never evicted) while a rollout that is not
        finished carries it; after that it is an ordinary cached release again."""
        needed = {r.firmware_id for r in self.rollouts.rollouts() if not r.terminal}
        for release in self.firmware.list():
            if release.pinned and release.firmware_id not in needed:
                with contextlib.suppress(FirmwareCacheError):
                    await self.firmware.unpin(release.firmware_id)
                    log.info("firmware %s unpinned: no rollout needs it", release.firmware_id)

    def _ble_central(self) -> BleCentral:
        """bleak on BlueZ, or (tests) the backends of the module ``ble.backend`` names."""
        from navign_gateway.ble.push import BleCentral

        ble = self.config.ble
        if ble.backend == "bluez":
            return BleCentral(max_connections=ble.max_connections, adapter=ble.adapter)
        try:
            module = importlib.import_module(ble.backend)
            client, scanner = module.client_backend, module.scanner_backend
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"ble.backend: {ble.backend!r} is not a bleak backend: {exc}"
            ) from None
        return BleCentral(
            max_connections=ble.max_connections, client_backend=client, scanner_backend=scanner
        )

    def _beacon_changed(self, record: BeaconRecord, before: BeaconRecord | None) -> None:
        """A change worth telling the server (§3.16): anything but RSSI and last seen alone,
        which go along with the next report anyway."""
        if before is None or _reported_fields(record) != _reported_fields(before):
            self._beacons_to_report.add(record.beacon_id)
        elif record.last_seen - self._beacon_reported_at.get(record.beacon_id, 0.0) > 300:
            self._beacons_to_report.add(record.beacon_id)  # liveness, every 5 minutes

    async def _report_beacons(self, period: float = BEACON_REPORT_SECONDS) -> None:
        """The inventory's changes to the server, in batches; kept for the next try on failure."""
        failures = FailureLog(log, "beacon reports")
        while True:
            await asyncio.sleep(period)
            ids = sorted(self._beacons_to_report)[:BEACON_BATCH_MAX]
            records = [r for r in map(self.inventory.get, ids) if r is not None and r.last_seen]
            if not records:
                self._beacons_to_report.difference_update(ids)
                continue
            report = BeaconStatusReport(
                entity_id=self.config.entity_id,
                beacons=[_beacon_status(r) for r in records],
            )
            try:
                body = report.model_dump(mode="json", exclude_none=True)
                async with self.upstream.request("POST", BEACON_REPORT_PATH, json_body=body) as r:
                    await raise_for_error(r)
            except (UpstreamError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                failures.failed(exc)
                continue
            failures.recovered()
            self._beacons_to_report.difference_update(ids)
            for record in records:
                self._beacon_reported_at[record.beacon_id] = record.last_seen

    async def _follow_mall_beacons(self, period: float = 10.0) -> None:
        """Reload the mall's beacons whenever the copy moved on (a sync by any path)."""
        seen = await self.copy.cursor()
        while True:
            await asyncio.sleep(period)
            cursor = await self.copy.cursor()
            if cursor != seen:
                seen = cursor
                await self._load_mall_beacons()

    async def _load_mall_beacons(self) -> None:
        """The mall copy's beacons (chip, MAC, iBeacon numbers) for the inventory: rollouts
        target them, and BLE advertisers are recognised by them."""
        try:
            beacons = await self.copy.beacon_identities()
        except MallCopyError:
            return  # no copy yet: loaded after the first sync
        self.inventory.set_mall_beacons(beacons)

    async def _on_firmware_update(self, event: FirmwareUpdateEvent) -> None:
        seq = int(self.uplink.current_event_id) if self.uplink.current_event_id.isdigit() else 0
        await self.rollouts.submit(event, seq)
        info = FirmwareInfo.model_validate(event.model_dump(include=set(FirmwareInfo.model_fields)))
        if self.firmware.get(info.firmware_id) is not None:
            return
        self._background_task(self._fetch_firmware(info), f"firmware-{info.firmware_id}")

    async def _fetch_firmware(self, info: FirmwareInfo) -> None:
        """Download and verify an assigned release, pinned (a rollout needs it). Network and
        full-disk failures are retried for about two hours (the .part resumes); a release that
        fails verification or cannot fit is refused for good (already logged and reported)."""
        backoff = Backoff(initial=5.0, maximum=600.0)
        for _ in range(20):
            try:
                await self.firmware.ensure(info, pin=True)
                return
            except (FirmwareRejected, CacheBudgetError) as exc:
                log.error("firmware %s refused: %s", info.firmware_id, exc)
                await self.rollouts.release_refused(info.firmware_id, str(exc))
                return
            except (UpstreamError, DiskFullError) as exc:
                log.warning("firmware %s: %s; retrying", info.firmware_id, exc)
                floor = exc.retry_after if isinstance(exc, UpstreamError) else None
                await asyncio.sleep(backoff.next_delay(floor=floor))

    def _background_task(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._task_done)

    async def _on_task_create(self, event: TaskCreateEvent) -> None:
        await self.tasks.create_from_event(event)

    async def _on_config_update(self, event: ConfigUpdateEvent) -> None:
        if event.type == "robot_selection":
            try:
                await self.tasks.apply_config(event.config, event.version)
            except (InvalidSelectionConfigError, ValueError) as exc:
                log.error("config_update %s version %d refused: %s", event.type, event.version, exc)
            return
        key = f"config.{event.type}"
        stored = await self.db.get_state(key)
        if stored is None or json.loads(stored)["version"] < event.version:
            await self.db.set_state(
                key, json.dumps({"version": event.version, "config": event.config})
            )

    # -- heartbeat ---------------------------------------------------------------------------

    async def _executed_commands(self) -> list[str]:
        raw = await self.db.get_state(STATE_EXECUTED_COMMANDS)
        return list(json.loads(raw)) if raw else []

    async def heartbeat_once(self, acked: list[str]) -> HeartbeatResponse:
        sample = await asyncio.to_thread(self.host.sample)  # statvfs touches the SD card
        used, _budget = self.firmware.usage()
        fields = sample.heartbeat_fields()
        metrics = HeartbeatMetrics(
            cpu_percent=float(fields.get("cpu_percent") or 0.0),
            memory_used_mb=float(fields.get("memory_used_mb") or 0.0),
            disk_used_gb=float(fields.get("disk_used_gb") or 0.0),
            cache_size_mb=used / (1024 * 1024),
        )
        counts = self.tasks.counts()
        healthy = self.uplink.state is UplinkState.CONNECTED
        request = HeartbeatRequest(
            orchestrator_id=self.config.orchestrator_id,
            entity_id=self.config.entity_id,
            status=GatewayStatus.HEALTHY if healthy else GatewayStatus.DEGRADED,
            version=__version__,
            uptime_seconds=int(time.monotonic() - self.started_at),
            connected_robots=self.robots.online_count(),
            active_tasks=counts.active,
            pending_tasks=counts.pending,
            metrics=metrics,
            timestamp=datetime.now(UTC),
            acked_commands=acked[-100:],
        )
        body = request.model_dump(mode="json")
        async with self.upstream.request("POST", HEARTBEAT_PATH, json_body=body) as response:
            await raise_for_error(response)
            return HeartbeatResponse.model_validate_json(await response.read())

    async def _heartbeat_loop(self) -> None:
        interval = float(self.config.heartbeat_interval)
        acked: list[str] = []
        while True:
            if self.uplink.state is UplinkState.REFUSED:
                return  # the server refused this gateway: nothing more to tell it
            try:
                response = await self.heartbeat_once(acked)
                self._heartbeat_failures.recovered()
                interval = float(response.next_heartbeat_seconds)
                acked = await self._run_commands(response)
                skew = abs((response.server_time - datetime.now(UTC)).total_seconds())
                if skew > 60:
                    log.warning("clock differs from the server's by %.0f s", skew)
            except RestartRequestedError:
                raise
            except (UpstreamError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self._heartbeat_failures.failed(exc)
            except Exception as exc:  # the heartbeat must outlive any one failure
                if self._heartbeat_failures.failures == 0:
                    log.exception("heartbeat: unexpected failure")
                self._heartbeat_failures.failed(exc)
            await asyncio.sleep(interval)

    async def _run_commands(self, response: HeartbeatResponse) -> list[str]:
        executed = await self._executed_commands()
        acked: list[str] = []
        restart = False
        for command in response.commands:
            if command.id not in executed:
                if command.type == CommandType.RESYNC:
                    await self.sync.full()
                elif command.type == CommandType.REFRESH_TOKEN:
                    await self.credentials.refresh_now()
                elif command.type == CommandType.RESTART:
                    restart = True
                elif command.type == CommandType.REPORT_INVENTORY:
                    self._beacons_to_report.update(r.beacon_id for r in self.inventory.all())
                elif command.type in ROLLOUT_COMMANDS:
                    await self._rollout_command(command.type, command.params)
                else:
                    log.info("command %s of type %r skipped", command.id, command.type)
                executed.append(command.id)
            acked.append(command.id)
        await self.db.set_state(
            STATE_EXECUTED_COMMANDS, json.dumps(executed[-REMEMBERED_COMMANDS:])
        )
        if restart:
            # Acknowledge first, or the restarted gateway would restart again.
            with contextlib.suppress(UpstreamError, aiohttp.ClientError, TimeoutError, OSError):
                await self.heartbeat_once(acked)
            raise RestartRequestedError
        return acked

    async def _post_report(self, path: str, body: dict[str, Any]) -> int:
        """One rollout report to the server (the sender decides what a status means)."""
        async with self.upstream.request("POST", path, json_body=body) as response:
            return response.status

    async def _rollout_command(self, kind: str, params: dict[str, Any]) -> None:
        """A server command for a rollout (§3.7): pause, resume, abort or approve. One the
        rollout's state does not allow is logged and acknowledged (it cannot succeed later)."""
        action = ROLLOUT_COMMANDS[kind]
        rollout_id, reason, wave = (
            params.get("rollout_id"),
            params.get("reason"),
            params.get("wave"),
        )
        if not isinstance(rollout_id, str) or (wave is not None and not isinstance(wave, int)):
            log.error("command %s: params need rollout_id (and an integer wave)", kind)
            return
        try:
            await self.rollouts.control(
                rollout_id,
                action,
                reason=reason if isinstance(reason, str) else "server command",
                wave=wave,
            )
        except RolloutControlError as exc:
            log.warning("command %s for %s not applied: %s", kind, rollout_id, exc)

    async def _watchdog(self, period: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(period)

    def _grpc_tls(self) -> ServerTls | None:
        files = self.config.grpc.tls_files
        if files is not None:
            tls = ServerTls(files)
            Gauge(
                "orchestrator_grpc_tls_not_after_seconds",
                "When the gRPC port's certificate expires (Unix time; follows a reload)",
                registry=self.registry,
            ).set_function(lambda: tls.not_after.timestamp())
            return tls
        grpc = self.config.grpc
        host = self.config.listen.grpc.rpartition(":")[0].strip("[]")
        if (grpc.operator_token_sha256 or grpc.reader_token_sha256) and not is_loopback(host):
            log.warning(
                "gRPC on %s has no TLS: operator and reader tokens cross the network in the "
                "clear (set grpc.tls_cert and grpc.tls_key)",
                self.config.listen.grpc,
            )
        return None

    # -- HTTP: health and metrics -------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        cursor = await self.copy.cursor()
        used, budget = self.firmware.usage()
        sample = await asyncio.to_thread(self.host.sample)
        disk_free = sample.disk_free_bytes
        return {
            "gateway": self.config.orchestrator_id,
            "entity": self.config.entity_id,
            "version": __version__,
            "uptime_seconds": int(time.monotonic() - self.started_at),
            "uplink": self.uplink.state.value,
            "refused": str(self.uplink.refused) if self.uplink.refused else None,
            "sync": {"seq": cursor, "last_success": self.sync.last_success},
            "checksum": (await self.copy.checksums()).global_checksum
            if cursor is not None
            else None,
            "local_copy": "ready" if cursor is not None else "empty",
            "firmware_cache": {"used_bytes": used, "budget_bytes": budget},
            "grpc_port": self.grpc_port,
            "grpc_tls": self.grpc_tls.describe() if self.grpc_tls else None,
            "disk_free_bytes": disk_free,
        }

    async def _healthz(self, request: web.Request) -> web.Response:
        status = await self.status()
        disk_ok = status["disk_free_bytes"] is None or status["disk_free_bytes"] > 16 * 1024 * 1024
        healthy = status["local_copy"] == "ready" and disk_ok
        status["status"] = (
            "ok"
            if healthy and status["uplink"] == "CONNECTED"
            else ("degraded" if healthy else "unhealthy")
        )
        return web.json_response(status, status=200 if healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # -- stop ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self.notifier.stopping()
        if hasattr(self, "uplink"):
            self.uplink.stop()
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        await self._stack.aclose()


async def run(config: GatewayConfig, config_path: Path | None) -> int:
    gateway = Gateway(config, config_path=config_path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    try:
        await gateway.start()
    except BaseException:
        # Whatever started is stopped again (the database's threads would otherwise keep a
        # failed process alive), then the failure is reported by the CLI in one line.
        await asyncio.wait_for(gateway.stop(), STOP_SECONDS)
        raise
    try:
        await gateway.wait()
    finally:
        try:
            await asyncio.wait_for(gateway.stop(), STOP_SECONDS)
        except TimeoutError:
            log.error("stop took longer than %.0f s", STOP_SECONDS)
    return gateway.exit_code

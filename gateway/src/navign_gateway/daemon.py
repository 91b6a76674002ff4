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
import json
import logging
import signal
import ssl
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from navign_gateway import __version__
from navign_gateway.backoff import Backoff, FailureLog
from navign_gateway.config import GatewayConfig
from navign_gateway.credentials import Credentials
from navign_gateway.db import Database
from navign_gateway.firmware import CacheBudgetError, DiskFullError, FirmwareCache, FirmwareRejected
from navign_gateway.firmware_http import add_firmware_routes
from navign_gateway.grpc_service import (
    OrchestratorServicer,
    start_grpc_server,
    stop_grpc_server,
)
from navign_gateway.hostmetrics import HostMetrics
from navign_gateway.identity import Identity, create_identity, load_identity
from navign_gateway.localapi import add_local_api
from navign_gateway.mallcopy import MallCopy
from navign_gateway.memory import release_memory
from navign_gateway.robots import InvalidSelectionConfigError, RobotRegistry
from navign_gateway.sdnotify import Notifier, watchdog_period
from navign_gateway.sync import SyncEngine
from navign_gateway.tasks import TaskEngine
from navign_gateway.uplink import Uplink, UplinkState
from navign_gateway.upstream import Upstream, UpstreamError, raise_for_error
from navign_proto.wire import (
    CommandType,
    ConfigUpdateEvent,
    DataUpdateEvent,
    FirmwareInfo,
    FirmwareUpdateEvent,
    GatewayStatus,
    HeartbeatMetrics,
    HeartbeatRequest,
    HeartbeatResponse,
    ResyncRequiredEvent,
    TaskCreateEvent,
    TaskStatusReport,
)

log = logging.getLogger(__name__)

STOP_SECONDS = 5.0
HEARTBEAT_PATH = "/api/orchestrators/heartbeat"
TASK_REPORT_PATH = "/api/orchestrators/reports/tasks"
STATE_EXECUTED_COMMANDS = "heartbeat.executed_commands"
#: Executed command ids remembered, so a lost acknowledgement never repeats one (§3.7).
REMEMBERED_COMMANDS = 200
#: Exit code asking systemd (Restart=always) to start the gateway again.
EXIT_RESTART = 75


def client_ssl(config: GatewayConfig) -> ssl.SSLContext:
    """TLS to the server, always verified: against the configured CA bundle (a private CA),
    else the system's trust store. There is no switch to turn verification off."""
    if config.ca_bundle is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(config.ca_bundle))


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
        self._heartbeat_failures = FailureLog(log, "heartbeat")
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

        self.robots = RobotRegistry()
        self.tasks = TaskEngine(self.db, self.robots, ServerTaskReporter(self.upstream))
        await self.tasks.migrate()
        self.host = HostMetrics(config.data_dir)

        await self._start_http()
        servicer = OrchestratorServicer(self.robots, self.tasks)
        server, self.grpc_port = await start_grpc_server(config.listen.grpc, [servicer.register])
        self.grpc_server = server
        # Towers see their streams end with OK, not CANCELLED.
        self._stack.push_async_callback(
            stop_grpc_server, server, 1.0, end_streams=[servicer.end_streams]
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

    async def _on_resync(self, event: ResyncRequiredEvent) -> None:
        collections = None if event.collections == "all" else list(event.collections)
        result = await self.sync.full(collections)
        await self.uplink.reset_event_cursor(result.seq)

    async def _on_firmware_update(self, event: FirmwareUpdateEvent) -> None:
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

    async def _watchdog(self, period: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(period)

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

"""The one-shot commands: ``navign-gateway status`` and ``navign-gateway sync-now``.

``status`` asks the running gateway (its ``/healthz`` on the loopback address of its HTTP port)
and, when nothing answers, reads what the database says about the last run. ``sync-now`` is a
sync of its own against the same database: the copy applies each page with its cursor in one
transaction and skips changes at or below the cursor, so it is safe while the daemon runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from navign_gateway import __version__
from navign_gateway.config import GatewayConfig
from navign_gateway.credentials import STATE_EXPIRES, Credentials
from navign_gateway.db import Database
from navign_gateway.identity import load_identity
from navign_gateway.mallcopy import MallCopy
from navign_gateway.sync import SyncEngine
from navign_gateway.uplink import STATE_LAST_EVENT_ID
from navign_gateway.upstream import Upstream

STATUS_TIMEOUT = aiohttp.ClientTimeout(total=5)


def _loopback_url(config: GatewayConfig) -> str:
    host, _, port = config.listen.http.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):  # noqa: S104 - what the gateway listens on, not what we bind
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def status(config: GatewayConfig) -> dict[str, Any]:
    url = _loopback_url(config) + "/healthz"
    try:
        async with (
            aiohttp.ClientSession(timeout=STATUS_TIMEOUT) as session,
            session.get(url) as response,
        ):
            report: dict[str, Any] = await response.json(content_type=None)
            report["running"] = True
            return report
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    report = {"running": False, "gateway": config.orchestrator_id, "entity": config.entity_id}
    path = config.data_dir / "gateway.sqlite3"
    if not path.exists():
        report["local_copy"] = "none (never started)"
        return report
    async with Database(path) as db:
        copy = MallCopy(db, config.entity_id)
        await copy.migrate()
        cursor = await copy.cursor()
        report["sync"] = {"seq": cursor}
        report["local_copy"] = "ready" if cursor is not None else "empty"
        report["last_event_id"] = await db.get_state(STATE_LAST_EVENT_ID)
        expires = await db.get_state(STATE_EXPIRES)
        report["token_expires_in_seconds"] = (
            None if expires is None else int(float(expires) - time.time())
        )
    return report


def describe(report: dict[str, Any]) -> list[str]:
    running = "running" if report.get("running") else "NOT running"
    lines = [f"gateway {report.get('gateway')} of {report.get('entity')}: {running}"]
    for key in ("status", "uplink", "refused", "local_copy", "sync", "firmware_cache", "grpc_tls"):
        if report.get(key) is not None:
            value = report[key]
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
            lines.append(f"  {key:<15} {shown}")
    return lines


async def sync_now(config: GatewayConfig, config_path: Path | None, *, full: bool) -> str:
    identity = load_identity(config.identity_key_path)
    from navign_gateway.daemon import client_ssl

    connector = aiohttp.TCPConnector(ssl=client_ssl(config))
    async with (
        Database(config.data_dir / "gateway.sqlite3") as db,
        aiohttp.ClientSession(connector=connector) as s,
    ):
        copy = MallCopy(db, config.entity_id)
        await copy.migrate()
        credentials = Credentials(
            session=s,
            config=config,
            identity=identity,
            db=db,
            version=__version__,
            config_path=config_path,
        )
        await credentials.load()
        upstream = Upstream(
            s, config.server_url, config.entity_id, config.orchestrator_id, credentials
        )
        engine = SyncEngine(upstream, copy)
        result = await (engine.full() if full else engine.delta())
        return f"{result.kind} sync: {result.changes} changes; the copy is at seq {result.seq}"

"""The uplink's event handling and reconnection against a scripted event-stream server on
loopback: unknown and invalid events are skipped but advance the cursor, the cursor survives a
reconnect (Last-Event-ID), the server's retry: is honoured, a silent stream is dropped by the
watchdog, and a refusal stops the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from navign_gateway.backoff import Backoff
from navign_gateway.credentials import Credentials
from navign_gateway.db import Database
from navign_gateway.sync import SyncEngine, SyncResult
from navign_gateway.uplink import STATE_LAST_EVENT_ID, Uplink, UplinkState
from navign_gateway.upstream import Upstream

ENTITY = "mall-test"


class Tokens:
    """A token source with a fixed token (the credentials are tested on their own)."""

    initial_sync_required = False
    has_token = True

    async def token(self) -> str:
        return "token-1"

    async def refresh(self, stale: str) -> str:
        return "token-1"

    async def refresh_now(self) -> None:
        return None

    def refresh_delay(self) -> float:
        return 3600.0


class Copy:
    """Stands in for the sync engine: the copy is at seq 3 and in step. The first ``failing``
    catch-ups fail as SQLite does when the disk is full."""

    def __init__(self, failing: int = 0) -> None:
        self.deltas = 0
        self.failing = failing

    async def cursor(self) -> int | None:
        return 3

    async def delta(self) -> SyncResult:
        self.deltas += 1
        if self.deltas <= self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        return SyncResult("current", 0, 3)

    async def full(self, collections: object = None) -> SyncResult:
        return SyncResult("full", 0, 3)


class Script:
    """What the scripted server sends on each successive connection."""

    def __init__(self, connections: list[list[bytes] | int]) -> None:
        self.connections = connections
        self.seen_ids: list[str | None] = []
        self.opened_at: list[float] = []

    async def events(self, request: web.Request) -> web.StreamResponse:
        index = len(self.seen_ids)
        self.seen_ids.append(request.headers.get("Last-Event-ID"))
        self.opened_at.append(time.monotonic())
        plan = self.connections[min(index, len(self.connections) - 1)]
        if isinstance(plan, int):
            return web.json_response(
                {
                    "error": {
                        "code": "ORCHESTRATOR_DISABLED",
                        "message": "disabled",
                        "request_id": "r",
                    }
                },
                status=plan,
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in plan:
            if chunk == b"<silence>":
                await asyncio.sleep(5)
                continue
            await response.write(chunk)
            await asyncio.sleep(0.01)
        return response


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database(tmp_path / "gw.sqlite3") as database:
        yield database


async def run_uplink(
    db: Database,
    script: Script,
    handlers: dict[str, Any],
    *,
    until: Any,
    ping: float = 15.0,
    copy: Copy | None = None,
) -> Uplink:
    app = web.Application()
    app.router.add_get("/api/orchestrators/events", script.events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            tokens = Tokens()
            upstream = Upstream(
                session, f"http://127.0.0.1:{port}", ENTITY, "gw-1", cast(Credentials, tokens)
            )
            uplink = Uplink(
                upstream=upstream,
                credentials=cast(Credentials, tokens),
                db=db,
                sync=cast(SyncEngine, copy or Copy()),
                handlers=handlers,
                ping_seconds=ping,
                backoff=Backoff(initial=0.05, maximum=0.1),
            )
            task = asyncio.create_task(uplink.run())
            try:
                for _ in range(400):
                    if until(uplink) or task.done():
                        break
                    await asyncio.sleep(0.025)
            finally:
                uplink.stop()
                await asyncio.wait_for(task, 10)
            return uplink
    finally:
        await runner.cleanup()


async def test_bad_and_unknown_events_are_skipped_and_the_cursor_resumes(db: Database) -> None:
    handled: list[tuple[str, int]] = []

    async def on_config(event: Any) -> None:
        handled.append(("config_update", event.version))

    first = [
        b"retry: 1500\r\n: navign events\r\n\r\n",
        b"id: 5\r\nevent: mystery_event\r\ndata: {}\r\n\r\n",
        b'id: 6\r\nevent: config_update\r\ndata: {"type": 7}\r\n\r\n',  # invalid payload
        b'id: 7\r\nevent: config_update\r\ndata: {"type":"robot_selection",'
        b'"config":{},"version":7}\r\n\r\n',
        b"event: ping\r\ndata: {}\r\n\r\n",
    ]
    script = Script([first, [b": still here\r\n\r\n"]])
    await run_uplink(
        db, script, {"config_update": on_config}, until=lambda _: len(script.seen_ids) >= 2
    )
    assert handled == [("config_update", 7)]
    assert await db.get_state(STATE_LAST_EVENT_ID) == "7"  # the ping did not move it
    # The first connection resumed from the copy's seq; the second from the last event.
    assert script.seen_ids[:2] == ["3", "7"]
    # The reconnection waited at least the server's retry: (1.5 s), not the 0.1 s backoff.
    assert script.opened_at[1] - script.opened_at[0] >= 1.4


async def test_a_silent_stream_is_dropped_by_the_watchdog(db: Database) -> None:
    script = Script([[b": hello\r\n\r\n", b"<silence>"]])
    await run_uplink(db, script, {}, ping=0.2, until=lambda _: len(script.seen_ids) >= 2)
    # 2.5 pings (0.5 s) of silence, not the 5 s the server kept quiet.
    assert script.opened_at[1] - script.opened_at[0] < 4


async def test_a_refusal_stops_the_uplink(db: Database) -> None:
    script = Script([403])
    uplink = await run_uplink(db, script, {}, until=lambda u: u.state is UplinkState.REFUSED)
    assert uplink.state is UplinkState.REFUSED
    assert uplink.refused is not None
    assert uplink.refused.code == "ORCHESTRATOR_DISABLED"
    assert len(script.seen_ids) == 1  # no retry


async def test_an_unexpected_failure_is_retried_not_fatal(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script([[b": hello\r\n\r\n"]])
    copy = Copy(failing=2)
    uplink = await run_uplink(db, script, {}, copy=copy, until=lambda _: len(script.seen_ids) >= 1)
    assert copy.deltas >= 3  # two failures, then the catch-up worked and the stream opened
    assert script.seen_ids
    assert uplink.state is not UplinkState.REFUSED
    assert "database or disk is full" in caplog.text

"""The SSE event stream through a real uvicorn server, read with httpx-sse (an independent
client): replay from Last-Event-ID, live events, resync_required, keepalive, retry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from .conftest import (
    RunningServer,
    TestGateway,
    enrolled_gateway,
    import_sample_mall,
    run_server,
    server_settings,
)
from .test_registration import assert_error

ENTITY = "mall-riverside"
READ_TIMEOUT = 10.0


async def collect(
    gateway: TestGateway,
    count: int,
    *,
    last_event_id: str | None = None,
    skip: tuple[str, ...] = ("ping",),
    on_open: Any = None,
) -> list[ServerSentEvent]:
    """Open the stream, run ``on_open`` once connected, and return the first ``count`` events."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    received: list[ServerSentEvent] = []
    async with (
        gateway.client() as client,
        aconnect_sse(client, "GET", "/api/orchestrators/events", headers=headers) as source,
    ):
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        iterator = source.aiter_sse().__aiter__()
        if on_open is not None:
            await on_open()
        async with asyncio.timeout(READ_TIMEOUT):
            while len(received) < count:
                event = await iterator.__anext__()
                # httpx-sse reports a block without data (our opening retry/comment) as an
                # event; the WHATWG rules dispatch nothing for it, so neither do we.
                if event.event in skip or event.data == "":
                    continue
                received.append(event)
    return received


async def rename_beacon(server: RunningServer, index: int, name: str) -> None:
    async with server.admin() as admin:
        listing = (await admin.get(f"/api/admin/entities/{ENTITY}/beacons")).json()["documents"]
        beacon = {**listing[index], "name": name}
        response = await admin.put(
            f"/api/admin/entities/{ENTITY}/beacons/{beacon['id']}", json=beacon
        )
        assert response.status_code == 200, response.text


@pytest.fixture
async def streaming(server: RunningServer) -> tuple[RunningServer, TestGateway]:
    await import_sample_mall(server)
    return server, await enrolled_gateway(server)


async def test_replay_from_last_event_id_then_live(streaming: Any) -> None:
    server, gateway = streaming
    head = (await server.ctx.store.entity_state(ENTITY)).head
    await rename_beacon(server, 0, "First rename")
    await rename_beacon(server, 1, "Second rename")

    async def live_change() -> None:
        await rename_beacon(server, 2, "Live rename")

    events = await collect(gateway, 3, last_event_id=str(head), on_open=live_change)
    assert [e.event for e in events] == ["data_update"] * 3
    assert [int(e.id) for e in events] == [head + 1, head + 2, head + 3]
    assert events[0].json()["changes"]["beacons"]
    assert events[0].json()["seq"] == head + 1
    state = await server.ctx.store.entity_state(ENTITY)
    assert events[-1].json()["checksum"] == state.checksums["global"]


async def test_seed_style_event_id_is_accepted(streaming: Any) -> None:
    server, gateway = streaming
    head = (await server.ctx.store.entity_state(ENTITY)).head
    await rename_beacon(server, 0, "Renamed")
    events = await collect(gateway, 1, last_event_id=f"evt-{head}")
    assert int(events[0].id) == head + 1


async def test_without_last_event_id_only_live_events(streaming: Any) -> None:
    server, gateway = streaming
    await rename_beacon(server, 0, "Before connecting")

    async def task() -> None:
        async with server.admin() as admin:
            response = await admin.post(
                f"/api/admin/entities/{ENTITY}/tasks",
                json={
                    "type": "delivery",
                    "priority": "high",
                    "sources": [{"area_id": "area-1f-atrium", "x": 1, "y": 2}],
                    "terminals": [{"area_id": "area-2f-east-wing", "x": 3, "y": 4}],
                },
            )
            assert response.status_code == 201, response.text

    events = await collect(gateway, 1, on_open=task)
    assert events[0].event == "task_create"
    data = events[0].json()
    assert data["type"] == "delivery"
    assert data["entity_id"] == ENTITY
    assert data["terminals"][0]["area_id"] == "area-2f-east-wing"


async def test_expired_last_event_id_gets_resync_required(streaming: Any) -> None:
    server, gateway = streaming
    await server.ctx.store.prune_history(ENTITY, datetime.now(UTC) + timedelta(seconds=1))
    events = await collect(gateway, 1, last_event_id="3")
    assert events[0].event == "resync_required"
    assert events[0].id in ("", None)
    assert set(events[0].json()["collections"]) == {"areas", "beacons", "merchants", "connections"}
    future = await collect(gateway, 1, last_event_id="999999")
    assert future[0].event == "resync_required"


async def test_unparseable_last_event_id_gets_resync_required(streaming: Any) -> None:
    # Not an error (protocol §4.3): a gateway that stored garbage would otherwise retry forever.
    _, gateway = streaming
    events = await collect(gateway, 1, last_event_id="abc")
    assert events[0].event == "resync_required"
    assert events[0].json()["reason"].startswith("last_event_id_unknown")


async def test_refusals_are_the_error_envelope(streaming: Any) -> None:
    _, gateway = streaming
    async with gateway.client() as client:
        assert (await client.head("/api/orchestrators/events")).status_code == 405
        assert_error(await client.post("/api/orchestrators/events"), 405, "METHOD_NOT_ALLOWED")
        wrong = await client.get("/api/orchestrators/events", headers={"X-Entity-ID": "mall-b"})
        assert_error(wrong, 403, "AUTH_FORBIDDEN")
        del client.headers["X-Entity-ID"]
        assert_error(await client.get("/api/orchestrators/events"), 422, "VALIDATION_ERROR")
    async with httpx.AsyncClient(base_url=gateway.server.base_url) as anonymous:
        assert_error(await anonymous.get("/api/orchestrators/events"), 401, "AUTH_MISSING")


async def test_keepalive_ping_and_retry(tmp_path: Path) -> None:
    async with run_server(server_settings(tmp_path, sse_ping_seconds=0.2), tmp_path) as server:
        await import_sample_mall(server)
        gateway = await enrolled_gateway(server)
        async with (
            gateway.client() as client,
            aconnect_sse(client, "GET", "/api/orchestrators/events") as source,
        ):
            retry = None
            pings: list[ServerSentEvent] = []
            async with asyncio.timeout(READ_TIMEOUT):
                async for event in source.aiter_sse():
                    retry = retry or event.retry
                    if event.event == "ping":
                        pings.append(event)
                    if len(pings) == 2:
                        break
    assert retry is not None
    assert 2000 <= retry < 5000
    assert datetime.fromisoformat(pings[0].json()["server_time"]).tzinfo is not None


async def test_stream_for_a_disabled_gateway_is_refused(streaming: Any) -> None:
    server, gateway = streaming
    async with server.admin() as admin:
        await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-1/disable")
    async with gateway.client() as client:
        assert_error(await client.get("/api/orchestrators/events"), 403, "ORCHESTRATOR_DISABLED")


async def wait_until(predicate: Any) -> None:
    """Poll the server's state (it has no event to wait on for this), within READ_TIMEOUT."""
    for _ in range(int(READ_TIMEOUT / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_disabling_a_gateway_ends_its_open_stream(streaming: Any) -> None:
    server, gateway = streaming
    async with (
        gateway.client() as client,
        aconnect_sse(client, "GET", "/api/orchestrators/events") as source,
    ):
        assert source.response.status_code == 200
        await wait_until(lambda: server.ctx.hub.subscriber_count == 1)
        async with server.admin() as admin:
            response = await admin.post(f"/api/admin/orchestrators/{ENTITY}/gw-1/disable")
            assert response.status_code == 200, response.text
        async with asyncio.timeout(READ_TIMEOUT):
            async for _ in source.aiter_sse():  # ends: the server closed the stream
                pass
    assert server.ctx.hub.subscriber_count == 0


async def test_a_client_disconnect_releases_the_subscription(streaming: Any) -> None:
    server, gateway = streaming
    async with (
        gateway.client() as client,
        aconnect_sse(client, "GET", "/api/orchestrators/events") as source,
    ):
        assert source.response.status_code == 200
        await wait_until(lambda: server.ctx.hub.subscriber_count == 1)
    await wait_until(lambda: server.ctx.hub.subscriber_count == 0)
    connections = server.ctx.metrics.sse_connections._value.get()
    assert connections == 0


async def test_shutdown_ends_open_streams_at_once(tmp_path: Path) -> None:
    runner = run_server(server_settings(tmp_path), tmp_path)
    server = await runner.__aenter__()
    await import_sample_mall(server)
    gateway = await enrolled_gateway(server)
    stopped = False
    try:
        async with (
            gateway.client() as client,
            aconnect_sse(client, "GET", "/api/orchestrators/events") as source,
        ):
            await wait_until(lambda: server.ctx.hub.subscriber_count == 1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            stopping = asyncio.create_task(runner.__aexit__(None, None, None))
            async with asyncio.timeout(READ_TIMEOUT):
                async for _ in source.aiter_sse():
                    pass
            await stopping
            stopped = True
            # Well inside the 5 s graceful-shutdown timeout that would otherwise cut it.
            assert loop.time() - started < 4.0
    finally:
        if not stopped:
            await runner.__aexit__(None, None, None)

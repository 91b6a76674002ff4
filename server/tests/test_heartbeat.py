"""Heartbeats: stored, commands delivered until acknowledged, offline after 3 missed intervals."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from navign_server.storage.base import Heartbeat

from .conftest import RunningServer, TestGateway, enrolled_gateway, import_sample_mall
from .test_registration import assert_error

ENTITY = "mall-riverside"


def heartbeat(gateway: TestGateway, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "orchestrator_id": gateway.orchestrator_id,
        "entity_id": ENTITY,
        "status": "healthy",
        "version": "0.1.0",
        "uptime_seconds": 120,
        "connected_robots": 2,
        "active_tasks": 1,
        "pending_tasks": 0,
        "timestamp": "2026-11-27T10:00:00Z",
        "metrics": {
            "cpu_percent": 12.5,
            "memory_used_mb": 180,
            "disk_used_gb": 2.1,
            "cache_size_mb": 40,
        },
    }
    body.update(changes)
    return body


@pytest.fixture
async def beating(server: RunningServer) -> tuple[RunningServer, TestGateway]:
    await import_sample_mall(server)
    return server, await enrolled_gateway(server)


async def test_heartbeat_commands_until_acknowledged(beating: Any) -> None:
    server, gateway = beating
    async with server.admin() as admin:
        queued = await admin.post(
            f"/api/admin/orchestrators/{ENTITY}/gw-1/commands",
            json={"type": "resync", "params": {"collections": ["areas"]}},
        )
        assert queued.status_code == 201, queued.text
        command_id = queued.json()["id"]
    async with gateway.client() as client:
        first = (await client.post("/api/orchestrators/heartbeat", json=heartbeat(gateway))).json()
        assert first["acknowledged"] is True
        assert first["next_heartbeat_seconds"] == 30
        assert [(c["id"], c["type"]) for c in first["commands"]] == [(command_id, "resync")]
        again = (await client.post("/api/orchestrators/heartbeat", json=heartbeat(gateway))).json()
        assert [c["id"] for c in again["commands"]] == [command_id]  # resent until acked
        acked = await client.post(
            "/api/orchestrators/heartbeat", json=heartbeat(gateway, acked_commands=[command_id])
        )
        assert acked.json()["commands"] == []
    beats = await server.ctx.store.list_heartbeats(ENTITY, "gw-1")
    assert len(beats) == 3
    assert beats[0].body["metrics"]["cpu_percent"] == 12.5


async def test_heartbeat_for_another_gateway_or_malformed(beating: Any) -> None:
    server, gateway = beating
    async with gateway.client() as client:
        other = await client.post(
            "/api/orchestrators/heartbeat", json=heartbeat(gateway, orchestrator_id="gw-2")
        )
        assert_error(other, 403, "AUTH_FORBIDDEN")
        mall_b = await client.post(
            "/api/orchestrators/heartbeat", json=heartbeat(gateway, entity_id="mall-other")
        )
        assert_error(mall_b, 403, "AUTH_FORBIDDEN")
        bad = await client.post(
            "/api/orchestrators/heartbeat", json=heartbeat(gateway, status="great", uptime=5)
        )
        assert_error(bad, 422, "VALIDATION_ERROR")
    assert await server.ctx.store.list_heartbeats(ENTITY, "gw-1") == []


async def test_offline_after_three_missed_intervals(beating: Any) -> None:
    server, _ = beating
    now = server.ctx.clock()
    body = {"status": "healthy"}
    # The gateway's interval is 30 s: a heartbeat 89 s old is fine, one 91 s old is offline.
    await server.ctx.store.record_heartbeat(
        Heartbeat(ENTITY, "gw-1", now - timedelta(seconds=89), body)
    )
    async with server.admin() as admin:
        assert (await admin.get(f"/api/admin/orchestrators/{ENTITY}/gw-1")).json()["online"] is True
    registered = await server.ctx.store.get_orchestrator(ENTITY, "gw-1")
    assert registered.last_heartbeat_at is not None
    other = TestGateway(server, ENTITY, "gw-2")
    await other.register()  # pending; no heartbeat
    async with server.admin() as admin:
        view = (await admin.get(f"/api/admin/orchestrators/{ENTITY}/gw-2")).json()
    assert view["online"] is False
    assert view["status"] == "pending"


async def test_missed_heartbeats_turn_a_gateway_offline(beating: Any) -> None:
    server, _ = beating
    old = server.ctx.clock() - timedelta(seconds=91)
    await server.ctx.store.record_heartbeat(Heartbeat(ENTITY, "gw-1", old, {"status": "healthy"}))
    async with server.admin() as admin:
        view = (await admin.get(f"/api/admin/orchestrators/{ENTITY}/gw-1")).json()
    assert view["online"] is False

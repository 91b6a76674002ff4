"""Gateway reports: beacon status, firmware status and task status, and their admin views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .conftest import RunningServer, TestGateway, enrolled_gateway, import_sample_mall
from .test_registration import assert_error

ENTITY = "mall-riverside"


@pytest.fixture
async def reporting(server: RunningServer) -> tuple[RunningServer, TestGateway]:
    await import_sample_mall(server)
    return server, await enrolled_gateway(server)


def when(minutes: int) -> str:
    return (datetime(2026, 11, 27, 10, 0, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


def beacon(beacon_id: str, minutes: int, **extra: Any) -> dict[str, Any]:
    return {
        "beacon_id": beacon_id,
        "last_seen": when(minutes),
        "firmware_version": "1.0.0",
        "ota_state": "idle",
        "rssi": -60,
        **extra,
    }


async def test_beacon_status_keeps_the_newest_report(reporting: Any) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        first = await client.post(
            "/api/orchestrators/reports/beacons",
            json={
                "entity_id": ENTITY,
                "beacons": [
                    beacon("b-1", 5, firmware_version="1.1.0", mac="24-6F-28-00-00-01"),
                    beacon("b-2", 5),
                ],
            },
        )
        assert first.status_code == 200, first.text
        assert first.json() == {"accepted": 2}
        older = await client.post(
            "/api/orchestrators/reports/beacons",
            json={"entity_id": ENTITY, "beacons": [beacon("b-1", 1, firmware_version="0.9.0")]},
        )
        assert older.status_code == 200
    async with server.admin() as admin:
        listing = (await admin.get(f"/api/admin/entities/{ENTITY}/beacon-status")).json()["beacons"]
    by_id = {b["beacon_id"]: b for b in listing}
    assert by_id["b-1"]["firmware_version"] == "1.1.0"  # the older report did not win
    assert by_id["b-1"]["mac"] == "24:6f:28:00:00:01"
    assert by_id["b-1"]["reported_by"] == "gw-1"
    assert set(by_id) == {"b-1", "b-2"}


@pytest.mark.parametrize(
    "bad",
    [
        {"beacons": []},
        {"beacons": [beacon("b-1", 0, rssi=50)]},
        {"beacons": [beacon("b-1", 0, ota_state="exploded")]},
        {"beacons": [beacon("../etc", 0)]},
        {"beacons": [beacon("b-1", 0, colour="red")]},
        {"beacons": [beacon(f"b-{i}", 0) for i in range(1001)]},
    ],
)
async def test_bad_beacon_reports_store_nothing(reporting: Any, bad: dict[str, Any]) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        response = await client.post(
            "/api/orchestrators/reports/beacons", json={"entity_id": ENTITY, **bad}
        )
    assert_error(response, 422, "VALIDATION_ERROR")
    assert await server.ctx.store.list_beacon_statuses(ENTITY) == []


async def test_reports_for_another_entity_are_forbidden(reporting: Any) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        response = await client.post(
            "/api/orchestrators/reports/beacons",
            json={"entity_id": "mall-other", "beacons": [beacon("b", 0)]},
        )
    assert_error(response, 403, "AUTH_FORBIDDEN")
    assert await server.ctx.store.list_beacon_statuses("mall-other") == []


async def test_firmware_status_counts_the_latest_state_per_beacon(reporting: Any) -> None:
    server, gateway = reporting
    steps = [
        ("b-1", "downloading", 1),
        ("b-1", "installing", 2),
        ("b-1", "success", 3),
        ("b-2", "downloading", 1),
        ("b-2", "failed", 2),
        ("b-3", "rolled_back", 4),
    ]
    async with gateway.client() as client:
        for beacon_id, status, minutes in steps:
            body = {
                "entity_id": ENTITY,
                "firmware_id": "fw-esp32c3-1.2.0",
                "beacon_id": beacon_id,
                "status": status,
                "at": when(minutes),
            }
            if status in ("failed", "rolled_back"):
                body["error_code"] = "HEALTH_CHECK_FAILED"
            response = await client.post("/api/orchestrators/reports/firmware", json=body)
            assert response.status_code == 200, response.text
        bad = await client.post(
            "/api/orchestrators/reports/firmware",
            json={"entity_id": ENTITY, "firmware_id": "fw-x", "status": "exploded", "at": when(0)},
        )
        assert_error(bad, 422, "VALIDATION_ERROR")
    async with server.admin() as admin:
        view = (
            await admin.get(
                f"/api/admin/entities/{ENTITY}/firmware-status",
                params={"firmware_id": "fw-esp32c3-1.2.0"},
            )
        ).json()
    assert view["counts"] == {"success": 1, "failed": 1, "rolled_back": 1}
    assert view["beacons"]["b-2"]["error_code"] == "HEALTH_CHECK_FAILED"
    assert len(view["recent"]) == 6


async def test_task_status(reporting: Any) -> None:
    server, gateway = reporting
    async with gateway.client() as client:
        for status, minutes in (("assigned", 1), ("in_progress", 2), ("completed", 3)):
            response = await client.post(
                "/api/orchestrators/reports/tasks",
                json={
                    "entity_id": ENTITY,
                    "task_id": "task-1",
                    "robot_id": "robot-7",
                    "status": status,
                    "progress_percent": 100 if status == "completed" else 40,
                    "at": when(minutes),
                    "location": {"area_id": "area-1f-atrium", "x": 1.5, "y": 2},
                },
            )
            assert response.status_code == 200, response.text
    async with server.admin() as admin:
        tasks = (await admin.get(f"/api/admin/entities/{ENTITY}/task-status")).json()["tasks"]
    assert [(t["task_id"], t["status"]) for t in tasks] == [("task-1", "completed")]

"""The storage contract for reports from gateways; only the ``Store`` interface is used, so
these run unchanged on MongoDB when ``NAVIGN_TEST_MONGODB_URL`` is set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from navign_server.storage.base import (
    BeaconStatusRecord,
    FirmwareStatusRecord,
    RolloutStatusRecord,
    Store,
    TaskStatusRecord,
)

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
ENTITY = "mall-riverside"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def mall(store: Store) -> Store:
    await store.create_entity({"id": ENTITY, "type": "mall", "name": "Riverside"}, at(0))
    return store


def beacon(beacon_id: str, seen: float, version: str) -> BeaconStatusRecord:
    return BeaconStatusRecord(
        ENTITY,
        beacon_id,
        "gw-1",
        at(seen),
        at(seen + 1),
        {"beacon_id": beacon_id, "firmware_version": version},
    )


async def test_beacon_status_newest_wins_in_any_order(mall: Store) -> None:
    await mall.record_beacon_statuses([beacon("b-2", 10, "1.1.0"), beacon("b-1", 10, "1.1.0")])
    await mall.record_beacon_statuses([beacon("b-1", 5, "1.0.0"), beacon("b-2", 20, "1.2.0")])
    statuses = await mall.list_beacon_statuses(ENTITY)
    assert [(s.beacon_id, s.body["firmware_version"], s.last_seen) for s in statuses] == [
        ("b-1", "1.1.0", at(10)),
        ("b-2", "1.2.0", at(20)),
    ]
    assert await mall.list_beacon_statuses("mall-other") == []


async def test_firmware_status_history_newest_first(mall: Store) -> None:
    steps = [("b-1", "downloading", 1), ("b-1", "success", 3), ("b-2", "failed", 2)]
    for beacon_id, status, seconds in steps:
        await mall.record_firmware_status(
            FirmwareStatusRecord(
                ENTITY,
                "fw-1",
                beacon_id,
                "gw-1",
                status,
                at(seconds),
                at(seconds),
                {"status": status},
            )
        )
    await mall.record_firmware_status(
        FirmwareStatusRecord(ENTITY, "fw-2", None, "gw-1", "downloading", at(9), at(9), {})
    )
    history = await mall.list_firmware_status(ENTITY, "fw-1")
    assert [(r.beacon_id, r.status) for r in history] == [
        ("b-1", "success"),
        ("b-2", "failed"),
        ("b-1", "downloading"),
    ]
    assert len(await mall.list_firmware_status(ENTITY, "fw-1", limit=2)) == 2
    gateway_only = await mall.list_firmware_status(ENTITY, "fw-2")
    assert gateway_only[0].beacon_id is None


async def test_task_status_newest_wins(mall: Store) -> None:
    def task(status: str, seconds: float) -> TaskStatusRecord:
        return TaskStatusRecord(
            ENTITY, "task-1", "gw-1", status, at(seconds), at(seconds), {"status": status}
        )

    await mall.record_task_status(task("in_progress", 5))
    await mall.record_task_status(task("assigned", 1))  # late arrival of an older report
    await mall.record_task_status(task("completed", 9))
    tasks = await mall.list_task_statuses(ENTITY)
    assert [(t.task_id, t.status, t.at) for t in tasks] == [("task-1", "completed", at(9))]


def rollout(
    rollout_id: str, state: str, seconds: float, *, firmware: str = "fw-1", gateway: str = "gw-1"
) -> RolloutStatusRecord:
    return RolloutStatusRecord(
        ENTITY,
        rollout_id,
        firmware,
        gateway,
        state,
        at(seconds),
        at(seconds + 0.5),
        {"rollout_id": rollout_id, "state": state, "seconds": seconds},
    )


async def test_rollout_status_newest_wins_and_late_reports_lose(mall: Store) -> None:
    await mall.record_rollout_status(rollout("fwa-1", "running", 5))
    await mall.record_rollout_status(rollout("fwa-1", "pending", 1))  # late, from an outbox
    (only,) = await mall.list_rollout_statuses(ENTITY)
    assert (only.rollout_id, only.state, only.at, only.received_at) == (
        "fwa-1",
        "running",
        at(5),
        at(5.5),
    )
    assert only.body == {"rollout_id": "fwa-1", "state": "running", "seconds": 5}

    # The same report again changes nothing; one as new (another gateway's) replaces it.
    await mall.record_rollout_status(rollout("fwa-1", "running", 5))
    assert await mall.list_rollout_statuses(ENTITY) == [only]
    await mall.record_rollout_status(rollout("fwa-1", "paused", 5, gateway="gw-2"))
    (same_time,) = await mall.list_rollout_statuses(ENTITY)
    assert (same_time.state, same_time.orchestrator_id) == ("paused", "gw-2")

    await mall.record_rollout_status(rollout("fwa-1", "completed", 9))
    (done,) = await mall.list_rollout_statuses(ENTITY)
    assert (done.state, done.at, done.orchestrator_id) == ("completed", at(9), "gw-1")
    assert await mall.list_rollout_statuses("mall-other") == []


async def test_rollout_status_filters_order_and_limit(mall: Store) -> None:
    await mall.record_rollout_status(rollout("fwa-b", "completed", 3))
    await mall.record_rollout_status(rollout("ro-7", "halted", 8, firmware="fw-2"))
    await mall.record_rollout_status(rollout("fwa-a", "completed", 3))
    await mall.record_rollout_status(rollout("fwa-c", "running", 6))

    listed = await mall.list_rollout_statuses(ENTITY)
    # Newest report first; rollouts reported at the same moment by id.
    assert [r.rollout_id for r in listed] == ["ro-7", "fwa-c", "fwa-a", "fwa-b"]
    completed = await mall.list_rollout_statuses(ENTITY, state="completed")
    assert [r.rollout_id for r in completed] == ["fwa-a", "fwa-b"]
    of_fw2 = await mall.list_rollout_statuses(ENTITY, firmware_id="fw-2")
    assert [(r.rollout_id, r.firmware_id) for r in of_fw2] == [("ro-7", "fw-2")]
    assert await mall.list_rollout_statuses(ENTITY, state="halted", firmware_id="fw-1") == []
    assert [r.rollout_id for r in await mall.list_rollout_statuses(ENTITY, limit=2)] == [
        "ro-7",
        "fwa-c",
    ]

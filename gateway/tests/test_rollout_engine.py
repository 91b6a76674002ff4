"""The rollout engine on a real database and inventory, driven by a clock the test controls.

Wi-Fi beacons are played by their §8.2 reports (what a beacon sends is the engine's whole input
on that path); the BLE path is driven through a scripted :class:`BleDelivery` (the real pusher
over bleak is tested against simulated beacons in test_ble_push.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from navign_gateway.beacons import BeaconInventory
from navign_gateway.db import Database
from navign_gateway.firmware import CachedRelease
from navign_gateway.firmware._release import unstamp
from navign_gateway.rollout import (
    EntryState,
    PushResult,
    RolloutControlError,
    RolloutEngine,
    RolloutState,
)
from navign_gateway.rollout.store import outbox_head
from navign_proto.wire import FirmwareUpdateEvent

from .conftest import ENTITY, T0, Clock

SHA = "ab" * 32
FIRMWARE_ID = "fw-esp32-1.1.0-abababababab"


def release() -> CachedRelease:
    at = unstamp("2026-01-01T00:00:00.000000Z")
    return CachedRelease(
        firmware_id=FIRMWARE_ID,
        name="navign-beacon",
        version="1.1.0",
        target="esp32",
        kind="app",
        secure_version=1,
        device_type="beacon",
        channel="stable",
        size=1000,
        sha256="cd" * 32,
        manifest_sha256=SHA,
        cached_at=at,
        last_used_at=at,
        pinned=True,
        directory=Path("/nonexistent"),
    )


def event(policy: dict[str, Any] | None = None, assignment: str = "fwa-1") -> FirmwareUpdateEvent:
    return FirmwareUpdateEvent.model_validate(
        {
            "firmware_id": FIRMWARE_ID,
            "version": "1.1.0",
            "target": "esp32",
            "device_type": "beacon",
            "channel": "stable",
            "size_bytes": 1000,
            "checksum": "sha256:" + "cd" * 32,
            "download_url": f"/api/firmware/{FIRMWARE_ID}/download",
            "secure_version": 1,
            "kind": "app",
            "rollout_strategy": policy,
            "assignment_id": assignment,
        }
    )


def report(beacon_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "beacon_id": beacon_id,
        "chip": "esp32",
        "app_version": "1.0.0",
        "firmware_version": "1.22.0",
        "secure_version": 0,
        "ota_state": "idle",
        "trial": None,
        "result": None,
    }
    body.update(fields)
    return body


def result(outcome: str, reason: str | None = None) -> dict[str, Any]:
    value = {"kind": "app", "version": "1.1.0", "manifest_sha256": SHA, "outcome": outcome}
    if reason:
        value["reason"] = reason
    return value


class Harness:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self.inventory = BeaconInventory(db, clock=clock)
        self.cached: CachedRelease | None = release()
        self.ble: ScriptedBle | None = None
        self.engine = self.new_engine()

    def new_engine(self, **kwargs: Any) -> RolloutEngine:
        return RolloutEngine(
            self.db,
            self.inventory,
            lambda fid: self.cached if fid == FIRMWARE_ID else None,
            ENTITY,
            ble=self.ble,
            clock=self.clock,
            **kwargs,
        )

    async def beacon_reports(self, beacon_id: str, **fields: Any) -> dict[str, str] | None:
        body = report(beacon_id, **fields)
        self.inventory.record_report(body)
        return await self.engine.on_report(body)

    async def update_wifi_beacon(self, beacon_id: str) -> None:
        """What the firmware does with an assignment, as its reports show it (§8.2)."""
        assert await self.beacon_reports(beacon_id) is not None
        assert await self.beacon_reports(beacon_id, ota_state="receiving") is not None
        await self.beacon_reports(beacon_id, ota_state="installing")
        await self.beacon_reports(
            beacon_id,
            app_version="1.1.0",
            ota_state="trial",
            trial="app",
            result=result("installed"),
        )
        await self.beacon_reports(beacon_id, app_version="1.1.0", result=result("committed"))

    def states(self, rollout_id: str = "fwa-1") -> dict[str, str]:
        rollout = self.engine.get(rollout_id)
        return {b: e.state.value for b, e in sorted(rollout.entries.items())}

    async def reports(self) -> list[tuple[str, dict[str, Any]]]:
        return [(i.path, i.body) for i in await outbox_head(self.db, 10_000)]


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Database(tmp_path / "gateway.sqlite3") as db:
        h = Harness(db, Clock())
        await h.inventory.open()
        await h.engine.open()
        yield h


async def seen(h: Harness, count: int) -> list[str]:
    ids = [f"b-{i:02d}" for i in range(1, count + 1)]
    for beacon_id in ids:
        await h.beacon_reports(beacon_id)
    return ids


async def test_a_wifi_rollout_goes_canary_first_then_everyone_and_reports_it(h: Harness) -> None:
    ids = await seen(h, 5)
    await h.engine.submit(event({"canary_size": {"count": 1}}), seq=7)
    assert h.engine.get("fwa-1").state is RolloutState.PENDING
    await h.engine.step()
    rollout = h.engine.get("fwa-1")
    assert rollout.state is RolloutState.RUNNING
    assert rollout.wave_count == 2
    canary = [b for b, e in rollout.entries.items() if e.wave == 1]
    assert len(canary) == 1
    assert h.states()[canary[0]] == "offered"
    others = [b for b in ids if b not in canary]
    for beacon_id in others:  # not offered while the canary runs
        assert await h.beacon_reports(beacon_id) is None
    await h.update_wifi_beacon(canary[0])
    assert h.states()[canary[0]] == "confirmed"
    await h.engine.step()
    assert h.engine.get("fwa-1").current_wave == 2
    for beacon_id in others:
        await h.update_wifi_beacon(beacon_id)
    await h.engine.step()
    rollout = h.engine.get("fwa-1")
    assert rollout.state is RolloutState.COMPLETED
    assert rollout.state_reason == "5 of 5 confirmed"
    sent = await h.reports()
    firmware = [b for p, b in sent if p.endswith("/firmware")]
    assert [b["status"] for b in firmware if b["beacon_id"] == canary[0]] == [
        "downloading",
        "installing",
        "installing",
        "success",
    ]
    summaries = [b for p, b in sent if p.endswith("/rollouts")]
    assert summaries[-1]["state"] == "completed"
    assert summaries[-1]["counts"]["confirmed"] == 5
    assert all(b["entity_id"] == ENTITY for _, b in sent)


async def test_a_canary_that_rolls_back_halts_the_rollout_and_nobody_else_gets_it(
    h: Harness,
) -> None:
    ids = await seen(h, 6)
    await h.engine.submit(event({"canary_size": {"count": 2}, "failure_threshold": 0.2}), seq=1)
    await h.engine.step()
    canary = [b for b, e in h.engine.get("fwa-1").entries.items() if e.wave == 1]
    await h.beacon_reports(canary[0])
    await h.beacon_reports(canary[0], result=result("rolled_back", "trial_failed"))
    await h.engine.step()
    rollout = h.engine.get("fwa-1")
    assert rollout.state is RolloutState.HALTED
    assert "1 of 2 beacons failed (trial_failed)" in rollout.state_reason
    assert rollout.entries[canary[0]].failure_reason == "trial_failed"
    # The other canary was already offered and finishes; the rest never hear of the release.
    assert await h.beacon_reports(canary[1]) is not None
    for beacon_id in ids:
        if beacon_id not in canary:
            assert await h.beacon_reports(beacon_id) is None
    for _ in range(3):
        h.clock.advance(60)
        await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.HALTED
    rolled = [b for p, b in await h.reports() if b.get("status") == "rolled_back"]
    assert rolled[0]["error_code"] == "trial_failed"
    assert rolled[0]["beacon_id"] == canary[0]
    # An operator who accepts the failure resumes; the halt does not trip again on it.
    await h.engine.control("fwa-1", "resume", reason="known issue")
    await h.update_wifi_beacon(canary[1])
    await h.engine.step()
    assert h.engine.get("fwa-1").current_wave == 2


async def test_refusals_are_final_and_same_version_counts_as_confirmed(h: Harness) -> None:
    await seen(h, 2)
    await h.engine.submit(event({"canary_size": {"percent": 100}, "failure_threshold": 1}), seq=1)
    await h.engine.step()
    await h.beacon_reports("b-01", result=result("refused", "invalid_signature"))
    await h.beacon_reports("b-02", result=result("refused", "same_version"))
    assert h.states() == {"b-01": "failed", "b-02": "confirmed"}
    assert h.engine.get("fwa-1").entries["b-01"].failure_reason == "invalid_signature"
    await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.COMPLETED


async def test_silence_is_retried_with_backoff_then_fails(h: Harness) -> None:
    await seen(h, 1)
    await h.engine.submit(event({"failure_threshold": 1}), seq=1)
    await h.engine.step()
    assert h.states() == {"b-01": "offered"}
    for attempt in range(1, 4):
        entry = h.engine.get("fwa-1").entries["b-01"]
        assert entry.attempts == attempt
        assert entry.state is EntryState.OFFERED
        h.clock.advance(h.engine.timeouts.offered_wifi + 1)
        await h.beacon_reports("b-01")  # still online, never fetching
        await h.engine.step()
        if attempt < 3:
            assert h.states() == {"b-01": "pending"}
            h.clock.advance(h.engine.timeouts.retry_max)
            await h.beacon_reports("b-01")
            await h.engine.step()
    entry = h.engine.get("fwa-1").entries["b-01"]
    assert entry.state is EntryState.FAILED
    assert entry.failure_reason == "no_response"


async def test_a_beacon_never_seen_fails_as_offline_after_the_timeout(h: Harness) -> None:
    h.inventory.set_mall_beacons([("ghost", "esp32", "AA:BB:CC:DD:EE:FF", 1, 1)])
    await h.engine.submit(event({"failure_threshold": 1}), seq=1)
    await h.engine.step()
    assert h.states() == {"ghost": "pending"}
    h.clock.advance(h.engine.timeouts.offline + 1)
    await h.engine.step()
    assert h.engine.get("fwa-1").entries["ghost"].failure_reason == "offline"


async def test_operator_controls_and_their_preconditions(h: Harness) -> None:
    await seen(h, 4)
    await h.engine.submit(event({"canary_size": {"count": 1}, "manual_approval": True}), seq=1)
    await h.engine.step()
    with pytest.raises(RolloutControlError) as refused:
        await h.engine.control("fwa-1", "approve", wave=2)
    assert refused.value.code == "failed_precondition"
    paused = await h.engine.control("fwa-1", "pause", reason="lunch rush")
    assert paused.state is RolloutState.PAUSED
    assert paused.state_reason == "lunch rush"
    assert (await h.engine.control("fwa-1", "pause")).state is RolloutState.PAUSED  # idempotent
    canary = next(b for b, e in h.engine.get("fwa-1").entries.items() if e.wave == 1)
    await h.update_wifi_beacon(canary)  # in flight: finishes while paused
    await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.PAUSED
    await h.engine.control("fwa-1", "resume")
    await h.engine.step()
    held = h.engine.get("fwa-1")
    assert held.state is RolloutState.HOLDING
    assert held.awaiting_approval
    with pytest.raises(RolloutControlError, match="wave 3"):
        await h.engine.control("fwa-1", "approve", wave=3)
    approved = await h.engine.control("fwa-1", "approve", wave=2)
    assert approved.state is RolloutState.RUNNING
    assert approved.current_wave == 2
    assert (await h.engine.control("fwa-1", "approve", wave=2)).state is RolloutState.RUNNING
    await h.engine.step()
    aborted = await h.engine.control("fwa-1", "abort", reason="wrong release")
    assert aborted.state is RolloutState.ABORTED
    offered = [b for b, s in h.states().items() if s == "offered"]
    assert offered
    for beacon_id in offered:
        assert await h.beacon_reports(beacon_id) is None
    with pytest.raises(RolloutControlError):
        await h.engine.control("fwa-1", "resume")
    with pytest.raises(RolloutControlError) as missing:
        await h.engine.control("nope", "pause")
    assert missing.value.code == "not_found"


async def test_time_holds_and_maintenance_windows(h: Harness) -> None:
    await seen(h, 3)
    # T0 is Thursday 00:00 UTC; the window opens at 02:00.
    policy = {
        "canary_size": {"count": 1},
        "hold_seconds": 600,
        "maintenance_windows": [{"start": "02:00", "end": "05:00"}],
    }
    await h.engine.submit(event(policy), seq=1)
    await h.engine.step()
    assert set(h.states().values()) == {"pending"}
    assert h.engine.get("fwa-1").state_reason == "outside the maintenance windows"
    h.clock.advance(2 * 3600)
    for b in ("b-01", "b-02", "b-03"):
        await h.beacon_reports(b)
    await h.engine.step()
    canary = next(b for b, s in h.states().items() if s == "offered")
    await h.update_wifi_beacon(canary)
    await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.HOLDING
    h.clock.advance(599)
    await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.HOLDING
    h.clock.advance(2)
    await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.RUNNING


async def test_a_restarted_engine_continues_where_it_stopped(h: Harness) -> None:
    await seen(h, 3)
    await h.engine.submit(event({"canary_size": {"count": 1}}), seq=1)
    await h.engine.submit(event({"canary_size": {"count": 1}}), seq=1)  # a replayed event
    await h.engine.step()
    canary = next(b for b, s in h.states().items() if s == "offered")
    await h.beacon_reports(canary, ota_state="receiving")
    await h.inventory.flush()
    before = h.states()
    # A new process: new inventory and engine on the same file.
    h.inventory = BeaconInventory(h.db, clock=h.clock)
    await h.inventory.open()
    h.engine = h.new_engine()
    await h.engine.open()
    assert h.states() == before
    assert before[canary] == "transferring"
    assert len(h.engine.rollouts()) == 1
    await h.update_wifi_beacon(canary)
    await h.engine.step()
    assert h.engine.get("fwa-1").current_wave == 2


class ScriptedBle:
    """Plays a beacon's side of a BLE push: the steps it reports, then its outcome."""

    def __init__(self, outcome: PushResult) -> None:
        self.outcome = outcome
        self.active = 0
        self.most = 0
        self.gate = asyncio.Event()
        self.calls: list[str] = []

    async def push(
        self, address: str, release: CachedRelease, progress: Callable[[EntryState, int], None]
    ) -> PushResult:
        self.calls.append(address)
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            progress(EntryState.TRANSFERRING, 0)
            await self.gate.wait()
            progress(EntryState.TRANSFERRING, release.size)
            progress(EntryState.INSTALLING, release.size)
            progress(EntryState.REBOOTING, release.size)
            return self.outcome
        finally:
            self.active -= 1


async def test_ble_pushes_respect_the_connection_limit(h: Harness) -> None:
    h.ble = ScriptedBle(PushResult("committed"))
    h.engine = h.new_engine(ble_concurrency=2)
    await h.engine.open()
    for i in range(1, 6):
        h.inventory.record_advertisement(f"b-{i:02d}", f"AA:BB:CC:00:00:0{i}", None, -60)
        h.inventory.record_report(report(f"b-{i:02d}"), transport="ble")
    await h.engine.submit(event({"canary_size": {"percent": 100}}), seq=1)
    await h.engine.step()
    await asyncio.sleep(0.05)
    assert h.ble.most == 2
    assert list(h.states().values()).count("transferring") == 2
    h.ble.gate.set()
    for _ in range(20):
        await h.engine.step()
        await asyncio.sleep(0.02)
        if h.engine.get("fwa-1").state is RolloutState.COMPLETED:
            break
    assert set(h.states().values()) == {"confirmed"}
    assert h.ble.most == 2
    assert len(h.ble.calls) == 5


async def test_a_ble_rollback_is_reported_with_its_reason(h: Harness) -> None:
    h.ble = ScriptedBle(PushResult("rolled_back", "trial_failed"))
    h.ble.gate.set()
    h.engine = h.new_engine()
    await h.engine.open()
    h.inventory.record_advertisement("b-01", "AA:BB:CC:00:00:01", None, -60)
    h.inventory.record_report(report("b-01"), transport="ble")
    await h.engine.submit(event(), seq=1)
    for _ in range(20):
        await h.engine.step()
        await asyncio.sleep(0.02)
        if h.engine.get("fwa-1").state is RolloutState.HALTED:
            break
    entry = h.engine.get("fwa-1").entries["b-01"]
    assert entry.state is EntryState.ROLLED_BACK
    assert entry.failure_reason == "trial_failed"


async def test_a_newer_rollout_of_the_same_target_supersedes_the_older(h: Harness) -> None:
    await seen(h, 2)
    await h.engine.submit(event(assignment="fwa-old"), seq=1)
    await h.engine.step()
    await h.engine.submit(event(assignment="fwa-new"), seq=2)
    await h.engine.step()
    old = h.engine.get("fwa-old")
    assert old.state is RolloutState.ABORTED
    assert old.state_reason == "superseded by fwa-new"
    assert [r.rollout_id for r in h.engine.rollouts()] == ["fwa-new", "fwa-old"]


async def test_a_policy_the_gateway_cannot_follow_halts_with_the_reason(h: Harness) -> None:
    bad = event()
    raw = json.loads(bad.model_dump_json())
    raw["rollout_strategy"] = {"canary_size": {"count": -1}}
    await h.engine.submit(FirmwareUpdateEvent.model_validate(raw), seq=1)
    rollout = h.engine.get("fwa-1")
    assert rollout.state is RolloutState.HALTED
    assert "canary_size.count" in rollout.state_reason


async def test_waiting_for_the_release_then_planning(h: Harness) -> None:
    await seen(h, 1)
    h.cached = None
    await h.engine.submit(event(), seq=1)
    await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.PENDING
    h.cached = release()
    await h.engine.step()
    assert h.engine.get("fwa-1").state is RolloutState.RUNNING
    assert h.engine.get("fwa-1").updated_at >= T0


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness


class RebootingBle(ScriptedBle):
    """Transfers at once, then stays in its post-reboot check-in until ``checked_in`` is set."""

    def __init__(self) -> None:
        super().__init__(PushResult("committed"))
        self.checked_in = asyncio.Event()

    async def push(
        self, address: str, release: CachedRelease, progress: Callable[[EntryState, int], None]
    ) -> PushResult:
        self.calls.append(address)
        progress(EntryState.TRANSFERRING, release.size)
        progress(EntryState.REBOOTING, release.size)
        await self.checked_in.wait()
        return self.outcome


async def test_a_beacon_rebooting_into_its_update_frees_its_transfer_slot(h: Harness) -> None:
    h.ble = RebootingBle()
    h.engine = h.new_engine(ble_concurrency=1)
    await h.engine.open()
    for i in (1, 2, 3):
        h.inventory.record_advertisement(f"b-{i:02d}", f"AA:BB:CC:00:00:0{i}", None, -60)
        h.inventory.record_report(report(f"b-{i:02d}"), transport="ble")
    await h.engine.submit(event({"canary_size": {"percent": 100}}), seq=1)
    for _ in range(6):
        await h.engine.step()
        await asyncio.sleep(0.02)
    # One transfer at a time, yet all three are transferred: each freed the slot on reboot.
    assert len(h.ble.calls) == 3
    assert set(h.states().values()) == {"rebooting"}
    h.ble.checked_in.set()
    for _ in range(10):
        await h.engine.step()
        await asyncio.sleep(0.02)
    assert set(h.states().values()) == {"confirmed"}

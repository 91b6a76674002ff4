"""A release published on the server reaches every beacon of a mall, canary first, through the real
gateway: 20 simulated beacons running the real firmware, 10 reaching the gateway over Wi-Fi and
10 only over BLE (through the simulated radio). What the server shows, and what the beacons
themselves advertise, is what is checked."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from navign_firmware.fleet import LiveBeacon
from navign_proto import keys
from navign_proto.grpc.navign.gateway.v1 import gateway_pb2 as pb

from ..conftest import ENTITY
from .mall import Mall, started, wait_for

pytestmark = pytest.mark.slow

ROLLOUT_TIMEOUT = 420.0
TRIAL_FLAG = 0x02


@pytest.fixture
def mall(tmp_path: Path) -> Iterator[Mall]:
    yield from started(tmp_path / "mall")


def advertised(beacon: LiveBeacon) -> tuple[str, bool] | None:
    """The app version and trial flag of the beacon's latest status frame (§8.4)."""
    for event in reversed(beacon.events):
        if event.get("ev") == "adv" and event.get("resp"):
            frame = bytes.fromhex(event["resp"])
            return ".".join(str(b) for b in frame[28:31]), bool(frame[19] & TRIAL_FLAG)
    return None


def beacon_results(mall: Mall, release: str) -> dict[str, dict[str, Any]]:
    """The server's latest firmware status per beacon (the gateway's own cache left out)."""
    beacons = mall.firmware_status(release)["beacons"]
    return {b: r for b, r in beacons.items() if b in mall.ids}


def all_confirmed(mall: Mall, release: str) -> Callable[[], dict[str, Any] | None]:
    """A check: every beacon's latest status for ``release`` is success."""

    def check() -> dict[str, Any] | None:
        beacons = beacon_results(mall, release)
        done = [b for b in mall.ids if beacons.get(b, {}).get("status") == "success"]
        return beacons if len(done) == len(mall.ids) else None

    return check


def all_advertise(mall: Mall, version: str, seconds: float) -> None:
    """Wait until every beacon advertises ``version`` as its app, not on trial (§8.4)."""
    deadline = time.monotonic() + seconds
    while True:
        shown = {b: advertised(mall.beacon(b)) for b in mall.ids}
        if set(shown.values()) == {(version, False)} or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    assert set(shown.values()) == {(version, False)}, shown


def rollout_report(mall: Mall, rollout_id: str, state: str) -> dict[str, Any] | None:
    return next(
        (r for r in mall.rollouts() if r["rollout_id"] == rollout_id and r["state"] == state), None
    )


def test_a_release_reaches_all_twenty_beacons_canary_first(mall: Mall) -> None:
    wait_for(
        "all beacons reported by the gateway",
        lambda: set(mall.beacon_statuses()) >= set(mall.ids),
        120,
    )
    inventory = mall.grpc_beacons()
    assert sorted(b.beacon_id for b in inventory) == mall.ids
    transports = {b.beacon_id: b.transport for b in inventory}
    assert {transports[b] for b in mall.wifi_ids} == {pb.TRANSPORT_WIFI}
    assert {transports[b] for b in set(mall.ids) - mall.wifi_ids} == {pb.TRANSPORT_BLE}

    release = mall.release_id(mall.publish_app("1.1.0"))
    policy = mall.root / "policy.json"
    policy.write_text('{"manual_approval": true}')
    rollout_id = mall.assign(release, "--canary", "2", "--policy", str(policy))

    # The canary wave runs, then the rollout holds for an operator: by then exactly the two
    # canaries have the release, committed, and no other beacon has heard of it.
    wait_for(
        "the rollout holding after the canary",
        lambda: rollout_report(mall, rollout_id, "holding"),
        ROLLOUT_TIMEOUT,
    )
    held = beacon_results(mall, release)
    assert len(held) == 2, held
    assert {r["status"] for r in held.values()} == {"success"}
    canaries = set(held)
    time.sleep(3)
    assert set(beacon_results(mall, release)) == canaries  # still held

    # The operator approves wave 2 from the server (a heartbeat command to the gateway).
    approved = mall.admin_cli("rollout", "approve", ENTITY, rollout_id, "--wave", "2")
    assert approved.returncode == 0, approved.stderr

    wait_for("20 beacons confirmed", all_confirmed(mall, release), ROLLOUT_TIMEOUT, every=2.0)
    report = wait_for(
        "the rollout reported completed",
        lambda: rollout_report(mall, rollout_id, "completed"),
        60,
    )
    assert report["counts"]["confirmed"] == 20
    assert report["wave_count"] == 2
    # Each beacon says so itself: it advertises 1.1.0, not on trial.
    all_advertise(mall, "1.1.0", 30)
    # The finished rollout no longer pins its release in the gateway's cache (evictable again).
    wait_for("the release unpinned", lambda: mall.pinned(release) is False, 30, every=0.5)
    # And the server's inventory follows (the gateway reports changes every 15 s).
    wait_for(
        "the server's beacon status showing 1.1.0",
        lambda: {mall.beacon_statuses()[b].get("app_version") for b in mall.ids} == {"1.1.0"},
        90,
    )


def test_a_release_failing_its_health_check_rolls_back_the_canaries_and_halts(
    mall: Mall,
) -> None:
    wait_for(
        "all beacons reported by the gateway",
        lambda: set(mall.beacon_statuses()) >= set(mall.ids),
        120,
    )
    # A release signed by a key the server does not trust is refused, and nothing is stored.
    stranger = mall.root / "stranger.pem"
    stranger.write_bytes(keys.private_key_to_pem(keys.generate_private_key()))
    refused = mall.publish_app("1.0.9", key=stranger)
    assert refused.returncode != 0
    assert "FIRMWARE_SIGNATURE_INVALID" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert mall.admin_get("/api/admin/releases")["releases"] == []

    # A properly signed release whose app cannot start: each canary tries it on trial, fails
    # its health check and goes back by itself; the first rollback halts the rollout.
    broken = b"raise RuntimeError('this build cannot start')\n"
    release = mall.release_id(mall.publish_app("1.1.0", patch={"navign/app.py": broken}))
    rollout_id = mall.assign(release, "--canary", "2")
    report = wait_for(
        "the rollout halted",
        lambda: rollout_report(mall, rollout_id, "halted"),
        ROLLOUT_TIMEOUT,
    )
    assert "trial_failed" in report["state_reason"], report

    def canaries_rolled_back() -> dict[str, dict[str, Any]] | None:
        results = beacon_results(mall, release)
        rolled = {b: r for b, r in results.items() if r["status"] == "rolled_back"}
        return rolled if len(rolled) == 2 else None

    rolled = wait_for("both canaries rolled back", canaries_rolled_back, ROLLOUT_TIMEOUT)
    assert {r["error_code"] for r in rolled.values()} == {"trial_failed"}
    time.sleep(5)
    assert set(beacon_results(mall, release)) == set(rolled)  # nobody else heard of it
    # Every beacon runs the old app, committed; the canaries say so themselves too.
    all_advertise(mall, "1.0.0", 60)
    halted = rollout_report(mall, rollout_id, "halted")
    assert halted is not None
    assert halted["counts"]["pending"] == 18


@pytest.fixture
def slow_mall(tmp_path: Path) -> Iterator[Mall]:
    # BLE at 6 KB/s: a push of the app (about 48 KB) takes several seconds, long enough to
    # stop the gateway and cut a beacon's power in the middle of it.
    yield from started(tmp_path / "mall", wifi=3, ble=3, link={"throughput_bytes_per_s": 6000})


def test_a_gateway_restarted_and_a_beacon_cut_mid_transfer_both_resume(slow_mall: Mall) -> None:
    mall = slow_mall
    assert mall.gateway is not None
    wait_for(
        "all beacons reported by the gateway",
        lambda: set(mall.beacon_statuses()) >= set(mall.ids),
        120,
    )
    release = mall.release_id(mall.publish_app("1.1.0"))
    rollout_id = mall.assign(release, "--canary", "100%")

    def transferring() -> list[Any] | None:
        rollout = mall.grpc_rollout(rollout_id)
        if rollout is None:
            return None
        moving = [
            b
            for b in rollout.beacons
            if b.state == pb.OTA_STATE_TRANSFERRING and b.bytes_transferred > 4096
        ]
        return moving or None

    moving = wait_for("a BLE transfer under way", transferring, ROLLOUT_TIMEOUT, every=0.2)
    # The gateway dies (no clean stop), and one beacon in the middle of its transfer loses power.
    mall.gateway.kill()
    cut = moving[0].beacon_id
    mall.beacon(cut).cut_power(off_for=2.0)
    mall.gateway.start()

    wait_for("every beacon confirmed", all_confirmed(mall, release), ROLLOUT_TIMEOUT, every=2.0)
    report = wait_for(
        "the rollout reported completed",
        lambda: rollout_report(mall, rollout_id, "completed"),
        60,
    )
    assert report["counts"]["confirmed"] == len(mall.ids)
    rollout = mall.grpc_rollout(rollout_id)
    assert rollout.state == pb.ROLLOUT_STATE_COMPLETED
    # Continued, not started over: no beacon needed more than its attempt and one retry.
    assert max(b.attempts for b in rollout.beacons) <= 2
    assert mall.beacon(cut).power_ons >= 2

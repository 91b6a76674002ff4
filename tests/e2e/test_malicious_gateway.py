"""A gateway is only a carrier (protocol §6.1): one that serves a tampered release, or a properly
signed release below a beacon's secure_version, gets it refused by the beacons themselves, over
Wi-Fi and over BLE. The test plays the malicious gateway: navign_firmware.testing.BeaconGateway
for Wi-Fi, and a GATT central (blelink) for BLE, against long-lived simulated beacons running
the real firmware."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from navign_firmware import blelink, build, fleet
from navign_firmware.fleet import LiveBeacon
from navign_firmware.testing import BeaconGateway, app_release, public_point_hex, release_key

pytestmark = pytest.mark.slow


@pytest.fixture
def malicious() -> Iterator[BeaconGateway]:
    with BeaconGateway() as gateway:
        yield gateway


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Callable[..., LiveBeacon]]:
    started: list[LiveBeacon] = []
    files = build.device_files(version="1.0.0")

    def make(beacon_id: str, uid: str, **kwargs: Any) -> LiveBeacon:
        board = fleet.provision_board(
            tmp_path / beacon_id,
            beacon_id=beacon_id,
            uid=uid,
            release_keys=[public_point_hex(release_key())],
            device_files=files,
            **kwargs,
        )
        beacon = LiveBeacon(board).start()
        started.append(beacon)
        return beacon

    try:
        yield make
    finally:
        for beacon in started:
            beacon.stop()


def refusal(gateway: BeaconGateway, beacon_id: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        for report in gateway.reports(beacon_id):
            result = report.get("result") or {}
            if result.get("outcome") == "refused":
                return str(result.get("reason"))
        return None

    return reason


def wait(check: Callable[[], Any], seconds: float = 90.0) -> Any:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError("not reached")


def tampered(release: Any) -> Any:
    artifact = bytearray(release.artifact)
    artifact[len(artifact) // 2] ^= 0xFF
    return dataclasses.replace(release, artifact=bytes(artifact))


def test_beacons_refuse_what_a_malicious_gateway_serves_over_wifi(
    malicious: BeaconGateway, live: Callable[..., LiveBeacon]
) -> None:
    url = f"http://127.0.0.1:{malicious.port}"
    cfg = {"ota": {"trial_boots": 3, "health_timeout_s": 20, "report_interval_s": 5}}
    swapped = live("b-wifi-1", "a4cf12aa0001", wifi=True, gateway_url=url, config=cfg)
    floored = live(
        "b-wifi-2", "a4cf12aa0002", wifi=True, gateway_url=url, config={**cfg, "secure_version": 3}
    )
    # Bytes changed after signing: the manifest verifies, the artifact does not match it.
    bad_bytes = tampered(app_release("1.1.0", firmware_id="fw-tampered"))
    # Properly signed by the release key, but below what the beacon was provisioned with.
    old = app_release("1.2.0", secure_version=1, firmware_id="fw-old")
    for release in (bad_bytes, old):
        malicious.publish(release)
    malicious.assign("b-wifi-1", bad_bytes)
    malicious.assign("b-wifi-2", old)
    assert wait(refusal(malicious, "b-wifi-1")) == "artifact_mismatch"
    assert wait(refusal(malicious, "b-wifi-2")) == "secure_version"
    # Both still run what they had, committed, and keep reporting.
    for beacon, beacon_id in ((swapped, "b-wifi-1"), (floored, "b-wifi-2")):
        last = malicious.reports(beacon_id)[-1]
        assert last["app_version"] == "1.0.0"
        assert last["trial"] is None
        assert beacon.failure is None


def test_beacons_refuse_what_a_malicious_gateway_pushes_over_ble(
    live: Callable[..., LiveBeacon],
) -> None:
    beacon = live("b-ble-1", "a4cf12aa0003")
    beacon.wait_for(lambda e: e.get("ev") == "gatt", 60)
    release = tampered(app_release("1.1.0"))
    with (
        blelink.GattLink(beacon.board.ble_port) as link,
        pytest.raises(blelink.RejectedError) as rejected,
    ):
        blelink.push(link, release.envelope, release.artifact)
    assert rejected.value.reason == "artifact_mismatch"
    floored = live("b-ble-2", "a4cf12aa0004", config={"secure_version": 3})
    floored.wait_for(lambda e: e.get("ev") == "gatt", 60)
    old = app_release("1.2.0", secure_version=1)
    with (
        blelink.GattLink(floored.board.ble_port) as link,
        pytest.raises(blelink.RejectedError) as rejected,
    ):
        blelink.push(link, old.envelope, old.artifact)
    assert rejected.value.reason == "secure_version"
    # Neither took anything: both still advertise 1.0.0.
    with blelink.GattLink(beacon.board.ble_port) as link:
        assert link.info()["app_version"] == "1.0.0"

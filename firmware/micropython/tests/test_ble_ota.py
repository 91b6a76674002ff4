"""BLE GATT on the real firmware: Device Information, and the Navign OTA protocol pushed by a
central over the simulated link (host/bluetooth.py): a beacon without WiFi is updated, checks in
over BLE on its trial boot, resumes after a dropped link, refuses forged releases, and asks again
for a damaged frame."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from navign_firmware import blelink
from navign_firmware.blelink import GattLink, RejectedError
from navign_firmware.sim import Running, SimBeacon
from navign_firmware.testing import app_release, image_release, release_key

from .conftest import beacon_config

pytestmark = pytest.mark.slow

MakeBeacon = Callable[..., SimBeacon]


def no_wifi() -> dict[str, object]:
    config = beacon_config()
    del config["wifi"]
    return config


@contextmanager
def running(board: SimBeacon, timeout: float = 120.0) -> Iterator[Running]:
    run = board.start(timeout=timeout)
    try:
        run.wait_for(lambda e: e["ev"] == "gatt")
        yield run
    finally:
        run.stop()


def test_device_information_and_the_beacons_state(make_beacon: MakeBeacon) -> None:
    board = make_beacon(no_wifi())
    with running(board), GattLink(board.ble_port) as link:
        assert link.read(blelink.DIS_MODEL) == b"esp32"
        assert link.read(blelink.DIS_FIRMWARE) == b"1.0.0"
        assert link.read(blelink.DIS_SOFTWARE) == b"1.0.0"
        info = link.info()
        assert info["beacon_id"] == "b-0001"
        assert info["ota_state"] == "idle"
        assert blelink.status(link) == 0


def test_an_app_pushed_over_ble_installs_and_commits_at_the_check_in(
    make_beacon: MakeBeacon,
) -> None:
    release = app_release("1.1.0", secure_version=1)
    board = make_beacon(no_wifi())
    with running(board) as run:
        with GattLink(board.ble_port) as link:
            stats = blelink.push(link, release.envelope, release.artifact)
        assert stats.resumed_at == 0
        assert run.join().end == "reset"  # DONE, then the beacon restarts into the new app
    with running(board) as run, GattLink(board.ble_port) as link:
        assert link.read(blelink.DIS_SOFTWARE) == b"1.1.0"
        assert blelink.status(link) == 1  # on trial: this STATUS is its check-in
        run.wait_for(lambda e: e["ev"] == "adv" and bytes.fromhex(e["resp"])[20] == 0)
        info = link.info()
        assert info["trial"] is None
        assert info["result"]["outcome"] == "committed"
    assert json.loads(board.read("/ota/boot.json"))["committed"] is True


def test_a_transfer_resumes_after_the_link_drops(make_beacon: MakeBeacon) -> None:
    release = image_release("2.0.0", size=64 * 1024)
    board = make_beacon(no_wifi())
    with running(board) as run:
        with GattLink(board.ble_port) as link:
            first = blelink.push(link, release.envelope, release.artifact, stop_after=20_000)
        assert first.resumed_at == 0
        with GattLink(board.ble_port) as link:
            second = blelink.push(link, release.envelope, release.artifact)
        # Resumed from what the beacon had written, not from zero (less than a window lost).
        assert 0 < second.resumed_at <= 20_000
        assert 20_000 - second.resumed_at < 8 * 240
        assert run.join().end == "reset"
    with running(board) as run:
        assert run.wait_for(lambda e: e["ev"] == "boot")["version"] == "2.0.0"


def test_a_transfer_resumes_after_a_power_cut(make_beacon: MakeBeacon) -> None:
    release = image_release("2.0.0", size=160 * 1024)
    board = make_beacon(no_wifi())
    with running(board), GattLink(board.ble_port) as link:
        blelink.push(link, release.envelope, release.artifact, stop_after=100_000)
    # The board lost power mid-transfer; after the reboot the envelope is verified again and the
    # transfer resumes from the last durable record (every 64 KiB for an image).
    with running(board) as run:
        with GattLink(board.ble_port) as link:
            stats = blelink.push(link, release.envelope, release.artifact)
        assert stats.resumed_at == 64 * 1024
        assert run.join().end == "reset"


def test_a_damaged_frame_is_asked_for_again(make_beacon: MakeBeacon) -> None:
    release = app_release("1.1.0")
    board = make_beacon(no_wifi())
    with running(board) as run:
        with GattLink(board.ble_port) as link:
            stats = blelink.push(
                link, release.envelope, release.artifact, corrupt_frames=frozenset({3, 40})
            )
        assert stats.nacks == 2
        assert stats.resent > 0
        assert run.join().end == "reset"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: app_release("9.0.0", signers=[release_key("gateway")]), "invalid_signature"),
        (lambda: app_release("1.0.0"), "same_version"),
        (lambda: image_release("0.9.0"), "downgrade"),
        (lambda: image_release("2.0.0", target="esp32c3"), "wrong_target"),
    ],
)
def test_releases_the_beacon_must_not_install_are_rejected(
    make_beacon: MakeBeacon, make: Callable[[], object], reason: str
) -> None:
    release = make()
    board = make_beacon(no_wifi())
    with running(board), GattLink(board.ble_port) as link:
        with pytest.raises(RejectedError) as refused:
            blelink.offer(link, release.envelope)  # type: ignore[attr-defined]
        assert refused.value.reason == reason
        assert link.info()["result"]["reason"] == reason
    assert not any(p.startswith("/app/b") for p in board.listing())

"""The real firmware on a simulated board: boot, advertising, and both kinds of update end to end
against a small gateway on loopback, with rollback when an update never proves healthy."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from navign_firmware import flash
from navign_firmware.sim import Boot, Event, SimBeacon
from navign_firmware.testing import BeaconGateway, app_release, image_release, release_key

from .conftest import BEACON_ID, beacon_config

pytestmark = pytest.mark.slow

MakeBeacon = Callable[..., SimBeacon]


def reported(gateway: BeaconGateway, **want: Any) -> Callable[[Event], bool]:
    """``until`` for SimBeacon.run: the gateway received a report with these fields."""

    def check(event: Event) -> bool:
        for report in gateway.reports(BEACON_ID):
            if all(_field(report, k) == v for k, v in want.items()):
                return True
        return False

    return check


def rolled_back_once(gateway: BeaconGateway) -> Callable[[Event], bool]:
    """``until``: the update was installed once (then no longer offered) and the beacon reports
    that it went back to 1.0.0 by itself."""

    def check(event: Event) -> bool:
        if reported(gateway, result_outcome="installed")(event):
            gateway.assign(BEACON_ID, None)  # one attempt: do not offer it again
        return reported(gateway, app_version="1.0.0", result_outcome="rolled_back")(event)

    return check


def _field(report: dict[str, Any], key: str) -> Any:
    if key.startswith("result_"):
        result = report.get("result") or {}
        return result.get(key.removeprefix("result_"))
    return report.get(key)


def first(boot: Boot, event: str) -> Event:
    found = boot.find(event)
    assert found, f"no {event!r} event in {boot.events}"
    return found[0]


def test_a_new_board_boots_and_advertises_ibeacon(make_beacon: MakeBeacon) -> None:
    board = make_beacon(beacon_config())
    boot = board.power_on(until=lambda e: e["ev"] == "adv", timeout=30)
    assert boot.end == "stopped", board.log_path.read_text()
    assert boot.partition == "ota_0"
    assert boot.version == "1.0.0"
    adv = bytes.fromhex(first(boot, "adv")["adv"])
    # iBeacon: Apple's company id, type 0x02 0x15, the entity UUID, major 7, minor 42.
    assert adv[5:9] == bytes.fromhex("4c000215")
    assert adv[9:25] == bytes.fromhex("6e617669676e4d616c6c000000000001")
    assert adv[25:29] == bytes.fromhex("0007002a")


@pytest.mark.parametrize(
    "config_bytes",
    [b"{not json", b"\xff\xfe\x00garbage", b"[]", json.dumps({"major": "seven"}).encode()],
)
def test_a_broken_config_never_stops_advertising(
    make_beacon: MakeBeacon, config_bytes: bytes
) -> None:
    board = make_beacon(None, files={"config.json": config_bytes})
    boot = board.power_on(until=lambda e: e["ev"] == "adv", timeout=30)
    assert boot.end == "stopped", board.log_path.read_text()
    resp = bytes.fromhex(first(boot, "adv")["resp"])
    assert resp[-12] & 0x01, "the Navign frame must flag the config fallback"


def test_an_app_update_installs_switches_and_commits_after_check_in(
    make_beacon: MakeBeacon, gateway: BeaconGateway
) -> None:
    release = app_release("1.1.0", secure_version=2)
    gateway.publish(release)
    gateway.assign(BEACON_ID, release)
    board = make_beacon(beacon_config(gateway.port))
    boots = board.run(
        until=reported(gateway, app_version="1.1.0", result_outcome="committed", trial=None),
        max_boots=4,
        timeout=120,
    )
    assert [b.end for b in boots] == ["reset", "stopped"], board.log_path.read_text()
    state = json.loads(board.read("/ota/boot.json"))
    assert state["active"] == "b"
    assert state["committed"] is True
    assert state["version"] == "1.1.0"
    assert json.loads(board.read("/ota/state.json"))["secure_version"] == 2
    # Every staged file is where the manifest says, with its bytes.
    for entry in release.manifest.files or ():
        assert len(board.read("/app/b/" + entry.path)) == entry.size


def test_an_app_that_crashes_on_trial_is_rolled_back_by_boot_py(
    make_beacon: MakeBeacon, gateway: BeaconGateway
) -> None:
    broken = app_release("1.1.0", patch={"navign/app.py": b"raise RuntimeError('bad build')\n"})
    gateway.publish(broken)
    gateway.assign(BEACON_ID, broken)
    board = make_beacon(beacon_config(gateway.port))

    boots = board.run(until=rolled_back_once(gateway), max_boots=8, timeout=180)
    # install → 3 trial boots that crash → back on 1.0.0 by itself.
    assert [b.end for b in boots] == ["reset", "reset", "reset", "reset", "stopped"], [
        b.end for b in boots
    ]
    state = json.loads(board.read("/ota/boot.json"))
    assert state["active"] == "a"
    assert state["rolled_back"]["reason"] == "trial_failed"


def test_an_image_update_boots_on_trial_and_is_confirmed(
    make_beacon: MakeBeacon, gateway: BeaconGateway
) -> None:
    release = image_release("2.0.0", secure_version=5)
    gateway.publish(release)
    gateway.assign(BEACON_ID, release)
    board = make_beacon(beacon_config(gateway.port))
    boots = board.run(
        until=reported(gateway, firmware_version="2.0.0", result_outcome="committed"),
        max_boots=4,
        timeout=120,
    )
    assert [b.partition for b in boots] == ["ota_0", "ota_1"]
    assert boots[1].find("boot")[0]["state"] == 1  # PENDING_VERIFY: on trial
    # Confirmed: the next power-on stays on the new image.
    gateway.assign(BEACON_ID, None)
    again = board.power_on(until=lambda e: e["ev"] == "adv", timeout=30)
    assert again.partition == "ota_1"
    assert again.version == "2.0.0"
    assert flash.image_version(release.artifact) == ("2.0.0", 5)


def test_an_image_that_never_checks_in_is_rolled_back_by_the_bootloader(
    make_beacon: MakeBeacon, gateway: BeaconGateway
) -> None:
    release = image_release("2.0.0")
    gateway.publish(release)
    gateway.assign(BEACON_ID, release)
    board = make_beacon(beacon_config(gateway.port, ota={"health_timeout_s": 10}))
    first_boot = board.power_on(timeout=60)
    assert first_boot.end == "reset", board.log_path.read_text()
    gateway.faults.report_status = 503  # the new image cannot check in
    trial = board.power_on(timeout=60)
    assert trial.partition == "ota_1"
    assert trial.end == "reset"  # the health check gave up
    gateway.faults.report_status = 200
    gateway.assign(BEACON_ID, None)
    boots = board.run(
        until=reported(gateway, firmware_version="1.0.0", result_outcome="rolled_back"),
        max_boots=2,
        timeout=60,
    )
    assert boots[0].partition == "ota_0"


def test_a_release_signed_by_another_key_is_refused_and_nothing_changes(
    make_beacon: MakeBeacon, gateway: BeaconGateway
) -> None:
    forged = app_release("9.0.0", signers=[release_key("gateway")])
    gateway.publish(forged)
    gateway.assign(BEACON_ID, forged)
    board = make_beacon(beacon_config(gateway.port))
    boots = board.run(until=reported(gateway, result_outcome="refused"), max_boots=1, timeout=60)
    report = next(r for r in gateway.reports(BEACON_ID) if r.get("result"))
    assert report["result"]["reason"] == "invalid_signature"
    assert report["app_version"] == "1.0.0"
    assert boots[0].end == "stopped"
    assert not any(path.startswith("/app/b") for path in board.listing())
    # The artifact was never requested: the manifest is checked first.
    assert not [r for r in gateway.state.requests if r[1] == f"/firmware/{forged.firmware_id}"]


def test_an_interrupted_download_resumes_with_range(
    make_beacon: MakeBeacon, gateway: BeaconGateway
) -> None:
    release = image_release("2.0.0", size=160 * 1024)
    gateway.publish(release)
    gateway.assign(BEACON_ID, release)
    gateway.faults.cut_after = 50_000
    gateway.faults.cuts = 2
    board = make_beacon(beacon_config(gateway.port))
    board.run(
        until=reported(gateway, firmware_version="2.0.0", result_outcome="committed"),
        max_boots=4,
        timeout=120,
    )
    ranges = [r[2] for r in gateway.state.requests if r[1] == f"/firmware/{release.firmware_id}"]
    assert ranges[0] is None
    assert all(r is not None and r.startswith("bytes=") for r in ranges[1:])
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:] if r]
    assert offsets == sorted(offsets)
    assert offsets[0] > 0


def test_an_app_that_hangs_on_trial_is_reset_by_the_watchdog_and_rolled_back(
    make_beacon: MakeBeacon, gateway: BeaconGateway
) -> None:
    # The new app starts the watchdog and then never feeds it (a hang in its main loop).
    hang = (
        b"import machine\n\n"
        b"def main():\n    machine.WDT(timeout=1500)\n    while True:\n        pass\n"
    )
    release = app_release("1.1.0", patch={"navign/app.py": hang})
    gateway.publish(release)
    gateway.assign(BEACON_ID, release)
    board = make_beacon(beacon_config(gateway.port))

    boots = board.run(until=rolled_back_once(gateway), max_boots=8, timeout=180)
    ends = [b.end for b in boots]
    assert ends[0] == "reset"  # installed, then restarted into the trial
    assert ends[1:4] == ["wdt", "wdt", "wdt"]  # three trial boots, each ended by the watchdog
    assert json.loads(board.read("/ota/boot.json"))["rolled_back"]["reason"] == "trial_failed"

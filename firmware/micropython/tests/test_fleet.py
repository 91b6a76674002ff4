"""navign_firmware.fleet with the real firmware: provisioned boards, beacons powered on again after
a reset or a watchdog reset, power cuts, their advertising appearing on and leaving the air
(navign_firmware.air), a fleet, and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from navign_firmware import blelink
from navign_firmware.air import Air, AirError, address_from_uid
from navign_firmware.blelink import GattLink
from navign_firmware.fleet import Fleet, LiveBeacon, load_board, load_boards, provision_board
from navign_firmware.sim import SimBeacon
from navign_firmware.testing import app_release, public_point_hex, release_key

pytestmark = pytest.mark.slow

KEY = public_point_hex(release_key())


@pytest.fixture
def air(tmp_path: Path) -> Air:
    return Air(tmp_path / "air")


@pytest.fixture
def provision(tmp_path: Path, device_files: dict[str, bytes]) -> Callable[..., SimBeacon]:
    def make(n: int = 1, **kwargs: object) -> SimBeacon:
        return provision_board(
            tmp_path / "boards" / f"b{n}",
            beacon_id=f"b-{n:04d}",
            uid=f"a4cf120000{n:02x}",
            release_keys=[KEY],
            device_files=device_files,
            minor=n,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def running(air: Air) -> Iterator[Callable[..., LiveBeacon]]:
    started: list[LiveBeacon] = []

    def start(board: SimBeacon, **kwargs: object) -> LiveBeacon:
        beacon = LiveBeacon(board, air=air, **kwargs).start()  # type: ignore[arg-type]
        started.append(beacon)
        return beacon

    yield start
    for beacon in started:
        beacon.stop()


def is_adv(n: int) -> Callable[[dict[str, object]], bool]:
    return lambda e: e["ev"] == "adv" and e["n"] == n


def test_provisioning_writes_the_config_and_refuses_bad_input(
    provision: Callable[..., SimBeacon], tmp_path: Path
) -> None:
    board = provision(3, wifi=True, gateway_url="http://127.0.0.1:8123")
    config = json.loads(board.read("/config.json"))
    assert config["beacon_id"] == "b-0003"
    assert config["release_keys"] == [KEY]
    assert config["wifi"] == {"ssid": "mall-ops", "password": "correct horse"}
    assert config["gateway"] == {"host": "127.0.0.1", "port": 8123}
    assert (config["major"], config["minor"]) == (7, 3)
    again = load_board(board.workdir)
    assert (again.uid, again.chip, again.env) == (board.uid, board.chip, board.env)
    assert [b.uid for b in load_boards(tmp_path / "boards")] == [board.uid]
    plain = provision(4)
    assert "wifi" not in json.loads(plain.read("/config.json"))

    bad: list[dict[str, object]] = [
        {"uid": "a4cf12"},
        {"beacon_id": "b 1"},
        {"release_keys": []},
        {"release_keys": ["04ab"]},
        {"gateway_url": "https://gw:8080"},
    ]
    for i, fields in enumerate(bad):
        args: dict[str, object] = {
            "beacon_id": "b-9",
            "uid": "a4cf12000009",
            "release_keys": [KEY],
            **fields,
        }
        target = tmp_path / f"bad{i}"
        with pytest.raises(ValueError, match=r"uid|beacon_id|release_keys|gateway_url"):
            provision_board(target, **args)  # type: ignore[arg-type]
        assert not target.exists()
    with pytest.raises(FileExistsError):
        provision(3)
    with pytest.raises(AirError):
        address_from_uid("a4cf1200000g")


def test_advertising_appears_on_the_air_and_leaves_it(
    provision: Callable[..., SimBeacon], running: Callable[..., LiveBeacon], air: Air
) -> None:
    board = provision(1)
    beacon = running(board, rssi=-71)
    event = beacon.wait_for(is_adv(1))
    record = air.get("A4:CF:12:00:00:01")
    assert record is not None
    assert record.adv == bytes.fromhex(event["adv"])
    assert record.resp == bytes.fromhex(event["resp"])
    assert record.interval_us == event["interval_us"] == 200_000
    assert record.gatt_port == board.ble_port
    assert (record.rssi, record.connectable, record.owner_pid) == (-71, True, os.getpid())
    assert [p.name for p in air.path.iterdir()] == ["a4cf12000001.json"]
    beacon.stop()
    assert air.snapshot() == {}
    assert list(air.path.iterdir()) == []
    assert (beacon.events[-1]["ev"], beacon.events[-1]["end"]) == ("power_off", "stopped")


def test_a_reset_is_followed_by_a_new_power_on(
    provision: Callable[..., SimBeacon], running: Callable[..., LiveBeacon], air: Air
) -> None:
    release = app_release("1.1.0")
    board = provision(1)
    beacon = running(board)
    beacon.wait_for(lambda e: e["ev"] == "gatt")
    with GattLink(board.ble_port) as link:
        blelink.push(link, release.envelope, release.artifact)  # DONE, then machine.reset()
    off = beacon.wait_for(lambda e: e["ev"] == "power_off")
    assert (off["end"], off["n"]) == ("reset", 1)
    beacon.wait_for(lambda e: e["ev"] == "gatt" and e["n"] == 2)
    with GattLink(board.ble_port) as link:
        assert link.read(blelink.DIS_SOFTWARE) == b"1.1.0"
    beacon.wait_for(is_adv(2))
    assert air.get("A4:CF:12:00:00:01") is not None


def test_a_watchdog_reset_is_followed_by_a_new_power_on(
    tmp_path: Path, device_files: dict[str, bytes], running: Callable[..., LiveBeacon]
) -> None:
    # A main.py that starts the watchdog and never feeds it: the harness resets the board.
    hang = b"import machine, time\nmachine.WDT(timeout=200)\ntime.sleep(30)\n"
    board = provision_board(
        tmp_path / "hang",
        beacon_id="b-hang",
        uid="a4cf120000ff",
        release_keys=[KEY],
        device_files={**device_files, "main.py": hang},
    )
    beacon = running(board)
    first = beacon.wait_for(lambda e: e["ev"] == "power_off")
    assert (first["end"], first["n"]) == ("wdt", 1)
    beacon.wait_for(lambda e: e["ev"] == "power_on" and e["n"] == 2)
    assert beacon.failure is None


def test_cut_power_kills_now_and_powers_on_again_or_stays_off(
    provision: Callable[..., SimBeacon], running: Callable[..., LiveBeacon], air: Air
) -> None:
    beacon = running(provision(1), off_after_cut=0.3)
    beacon.wait_for(is_adv(1))
    started = time.monotonic()
    beacon.cut_power()
    assert time.monotonic() - started < 5
    off = beacon.wait_for(lambda e: e["ev"] == "power_off")
    assert (off["end"], off["code"]) == ("cut", -signal.SIGKILL)
    assert air.snapshot() == {}  # withdrawn before cut_power() returned
    beacon.wait_for(is_adv(2), timeout=30)
    assert "A4:CF:12:00:00:01" in air.snapshot()

    beacon.cut_power(stay_off=True)
    mark = beacon.mark()
    time.sleep(1.0)
    assert not beacon.powered
    assert beacon.power_ons == 2
    assert beacon.events[mark:] == []
    assert air.snapshot() == {}
    beacon.power_on()
    beacon.wait_for(is_adv(3), timeout=30)


def test_a_fleet_puts_every_beacon_on_the_air(
    provision: Callable[..., SimBeacon], air: Air
) -> None:
    boards = [provision(n) for n in (1, 2, 3)]
    with Fleet(boards, air=air) as fleet:
        fleet.wait_advertising(timeout=60)
        assert sorted(air.snapshot()) == [f"A4:CF:12:00:00:0{n}" for n in (1, 2, 3)]
        ports = {record.gatt_port for record in air.snapshot().values()}
        assert ports == {board.ble_port for board in boards}
    assert air.snapshot() == {}
    with pytest.raises(ValueError, match="same uid"):
        Fleet([boards[0], load_board(boards[0].workdir)])


def test_the_command_line_provisions_and_runs_a_fleet_until_sigterm(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "navign_firmware.fleet"]
    shown = subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert "provision" in shown.stdout
    boards = tmp_path / "boards"
    made = subprocess.run(
        [*cli, "provision", str(boards / "b1"), "--beacon-id", "b-0001",
         "--uid", "a4cf12000001", "--release-key", KEY],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    refused = subprocess.run(
        [*cli, "provision", str(boards / "b2"), "--beacon-id", "b-0002",
         "--uid", "nope", "--release-key", KEY],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "12 hex digits" in refused.stderr
    assert not (boards / "b2").exists()

    air = Air(tmp_path / "air")
    log = tmp_path / "fleet.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cli, "run", str(boards), "--air", str(air.path)],
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "A4:CF:12:00:00:01" not in air.snapshot():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the fleet never advertised"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert air.snapshot() == {}
        assert "A4:CF:12:00:00:01" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
            proc.wait(timeout=30)

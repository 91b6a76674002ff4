"""bleak's public ``BleakScanner``/``BleakClient`` with ``backend=`` the simulated backend
(navign_firmware.bleak_backend), against real simulated beacons (the firmware on the MicroPython
unix port, kept powered by navign_firmware.fleet.LiveBeacon): scanning and decoding the frames,
GATT reads, writes and notifications, a full BLE OTA push through bleak, and the link model (MTU,
loss, a dropped link, throughput)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError

from navign_firmware import blelink
from navign_firmware.air import Air
from navign_firmware.bleak_backend import (
    LinkModel,
    LinkModelError,
    SimBleakClient,
    SimBleakScanner,
    SimLinkLostError,
    advertisement_data,
)
from navign_firmware.fleet import LiveBeacon
from navign_firmware.sim import Event, SimBeacon
from navign_firmware.testing import Release, app_release

from .conftest import BEACON_ID, beacon_config

pytestmark = pytest.mark.slow

MakeBeacon = Callable[..., SimBeacon]
ADDRESS: Final = "A4:CF:12:00:00:01"  # SimBeacon's default uid a4cf12000001
NAVIGN: Final = blelink.SERVICE
APPLE: Final = 0x004C
WINDOW_TIMEOUT: Final = 1.0  # a window without an answer is sent again (a lost last frame)


def no_wifi() -> dict[str, object]:
    config = beacon_config()
    del config["wifi"]
    return config


@pytest.fixture
def air(tmp_path: Path) -> Air:
    return Air(tmp_path / "air")


@pytest.fixture
def live(make_beacon: MakeBeacon, air: Air) -> Iterator[Callable[..., LiveBeacon]]:
    """Start a beacon (no WiFi) that lives for the test; waits for its first advertising."""
    started: list[LiveBeacon] = []

    def start(name: str = "b1", **board: Any) -> LiveBeacon:
        beacon = LiveBeacon(make_beacon(no_wifi(), name=name, **board), air=air).start()
        started.append(beacon)
        beacon.wait_for(lambda e: e["ev"] == "gatt")
        return beacon

    yield start
    for beacon in started:
        beacon.stop()


async def wait_event(
    beacon: LiveBeacon, predicate: Callable[[Event], bool], *, since: int = 0
) -> Event:
    return await asyncio.to_thread(beacon.wait_for, predicate, 30.0, since=since)


def connected(client: BleakClient) -> bool:
    return client.is_connected  # (a function: mypy would narrow the property for good)


def sim_client(address: str | BLEDevice, air: Air, **kwargs: Any) -> BleakClient:
    return BleakClient(address, backend=SimBleakClient, air=air, timeout=20, **kwargs)


# --- the async port of blelink.push (the gateway's own pusher is the rollout engine's) ------
@dataclass
class PushStats:
    resumed_at: int = 0
    frames: int = 0
    nacks: int = 0
    timeouts: int = 0
    seconds: float = 0.0


class OtaLink:
    """The control characteristic's notifications, queued."""

    def __init__(self, client: BleakClient) -> None:
        self.client = client
        self.notes: asyncio.Queue[bytes] = asyncio.Queue()

    async def __aenter__(self) -> OtaLink:
        await self.client.start_notify(
            blelink.CONTROL, lambda _c, d: self.notes.put_nowait(bytes(d))
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client.is_connected:
            await self.client.stop_notify(blelink.CONTROL)

    async def control(self, message: bytes) -> None:
        await self.client.write_gatt_char(blelink.CONTROL, message, response=True)

    async def expect(self, *ops: int, within: float = 10.0) -> bytes:
        async with asyncio.timeout(within):
            msg = await self.notes.get()
        if msg[0] == blelink.REJECT:
            raise blelink.RejectedError(msg[1], msg[2:].decode(errors="replace"))
        assert msg[0] in ops, f"unexpected notification {msg.hex()}"
        return msg

    async def status(self) -> int:
        await self.control(bytes((blelink.STATUS,)))
        return (await self.expect(blelink.STATUS_REPLY))[1]


async def push(
    link: OtaLink,
    release: Release,
    *,
    stop_after: int | None = None,
    max_timeouts: int = 30,
    stats: PushStats | None = None,
) -> PushStats:
    """OFFER, MANIFEST parts, DATA windows (ACK/NACK; a window without an answer is sent
    again), COMMIT; or return after ``stop_after`` bytes. ``stats`` is filled as it goes."""
    started = time.monotonic()
    stats = stats if stats is not None else PushStats()
    envelope, artifact = release.envelope, release.artifact
    payload = base64.b64decode(json.loads(envelope)["payload"])
    sha = hashlib.sha256(payload).digest()
    await link.control(struct.pack("<BI", blelink.OFFER, len(envelope)) + sha)
    msg = await link.expect(blelink.SEND_MANIFEST, blelink.ACCEPT)
    if msg[0] == blelink.SEND_MANIFEST:
        part = struct.unpack_from("<H", msg, 1)[0]
        for i in range(0, len(envelope), part):
            await link.control(struct.pack("<BI", blelink.MANIFEST, i) + envelope[i : i + part])
        msg = await link.expect(blelink.ACCEPT)
    offset, total, chunk, window = struct.unpack_from("<IIHB", msg, 1)
    assert total == len(artifact)
    stats.resumed_at = offset
    seq = 0
    while offset < total:
        pos = offset
        for _ in range(window):
            if pos >= total:
                break
            piece = artifact[pos : pos + chunk]
            frame = struct.pack("<HIH", seq & 0xFFFF, pos, len(piece)) + piece
            frame += struct.pack("<I", zlib.crc32(piece))
            await link.client.write_gatt_char(blelink.DATA, frame, response=False)
            stats.frames += 1
            seq += 1
            pos += len(piece)
            if stop_after is not None and pos - stats.resumed_at >= stop_after:
                stats.seconds = time.monotonic() - started
                return stats
        try:
            msg = await link.expect(blelink.ACK, blelink.NACK, within=WINDOW_TIMEOUT)
        except TimeoutError:
            stats.timeouts += 1
            assert stats.timeouts <= max_timeouts, "the beacon stopped answering"
            continue  # the window's last frame was lost: send it again from the last ACK
        stats.nacks += msg[0] == blelink.NACK
        offset = struct.unpack_from("<I", msg, 1)[0]
    await link.control(bytes((blelink.COMMIT,)))
    await link.expect(blelink.DONE, within=30)
    stats.seconds = time.monotonic() - started
    return stats


@asynccontextmanager
async def ota(address: str, air: Air, **kwargs: Any) -> AsyncIterator[OtaLink]:
    async with sim_client(address, air, **kwargs) as client, OtaLink(client) as link:
        yield link


# --- scanning ------------------------------------------------------------------------------
async def scan_once(air: Air, **kwargs: Any) -> tuple[BLEDevice, AdvertisementData]:
    found: asyncio.Queue[tuple[BLEDevice, AdvertisementData]] = asyncio.Queue()
    scanner = BleakScanner(
        lambda d, a: found.put_nowait((d, a)), backend=SimBleakScanner, air=air, **kwargs
    )
    async with scanner, asyncio.timeout(10):
        return await found.get()


async def test_a_scan_finds_the_beacon_and_its_frames_decode(
    live: Callable[..., LiveBeacon], air: Air, monkeypatch: pytest.MonkeyPatch
) -> None:
    beacon = await asyncio.to_thread(live)
    event = await wait_event(beacon, lambda e: e["ev"] == "adv")
    adv, resp = bytes.fromhex(event["adv"]), bytes.fromhex(event["resp"])

    device, data = await scan_once(air)
    assert device.address == ADDRESS
    assert device.name is None
    assert data.local_name is None
    assert data.rssi == beacon.rssi
    # The iBeacon frame: the manufacturer data after Apple's company id, as the board sent it.
    assert set(data.manufacturer_data) == {APPLE}
    ibeacon = data.manufacturer_data[APPLE]
    assert ibeacon == adv[7:30]
    assert ibeacon[:2] == b"\x02\x15"
    assert uuid.UUID(bytes=ibeacon[2:18]) == uuid.UUID(str(beacon_config()["entity_uuid"]))
    assert struct.unpack(">HHb", ibeacon[18:23]) == (7, 42, -59)
    # The Navign status frame: service data under the 128-bit Navign UUID (§8.4).
    assert set(data.service_data) == {NAVIGN}
    status = data.service_data[NAVIGN]
    assert status == resp[18:31]
    assert status[0] == 1  # frame version
    assert status[1] == 0  # flags: no WiFi, keys present, nothing on trial
    assert status[2] == 0  # IDLE
    assert status[3:7] == hashlib.sha256(BEACON_ID.encode()).digest()[:4]
    assert tuple(status[7:10]) == (1, 0, 0)
    assert tuple(status[10:13]) == (1, 0, 0)
    # The Navign UUID travels as service data only: like BlueZ, a UUID filter does not match it.
    assert data.service_uuids == []
    # (bleak types the class methods' keyword arguments: they get the air from the environment)
    monkeypatch.setenv("NAVIGN_SIM_AIR", str(air.path))
    filtered = await BleakScanner.discover(0.5, service_uuids=[NAVIGN], backend=SimBleakScanner)
    assert filtered == []
    # A passive scan sends no scan request: no scan response, no Navign frame.
    _, passive = await scan_once(air, scanning_mode="passive")
    assert passive.service_data == {}
    assert APPLE in passive.manufacturer_data


async def test_find_device_by_address_through_the_public_api(
    live: Callable[..., LiveBeacon], air: Air, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.to_thread(live)
    monkeypatch.setenv("NAVIGN_SIM_AIR", str(air.path))  # the way a gateway process is told
    device = await BleakScanner.find_device_by_address(
        ADDRESS.lower(), timeout=10, backend=SimBleakScanner
    )
    assert device is not None
    assert device.address == ADDRESS
    missing = await BleakScanner.find_device_by_address(
        "A4:CF:12:00:00:99", timeout=0.5, backend=SimBleakScanner
    )
    assert missing is None


# --- GATT ----------------------------------------------------------------------------------
async def test_connect_reads_the_device_information_and_the_mtu_is_capped(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    await asyncio.to_thread(live)
    async with sim_client(ADDRESS, air, link=LinkModel(mtu=185)) as client:
        assert connected(client)
        assert client.mtu_size == 185  # the link model's cap (the beacon offers 247)
        services = {s.uuid: s for s in client.services}
        dis = services["0000180a-0000-1000-8000-00805f9b34fb"]
        assert sorted(c.uuid for c in dis.characteristics) == sorted(
            [blelink.DIS_MODEL, blelink.DIS_FIRMWARE, blelink.DIS_SOFTWARE]
        )
        assert all(c.properties == ["read"] for c in dis.characteristics)
        chars = {c.uuid: c for c in services[NAVIGN].characteristics}
        assert sorted(chars[blelink.CONTROL].properties) == ["notify", "write"]
        assert chars[blelink.DATA].properties == ["write-without-response"]
        assert chars[blelink.INFO].properties == ["read"]
        assert chars[blelink.DATA].max_write_without_response_size == 182
        cccd = chars[blelink.CONTROL].descriptors[0]
        assert cccd.uuid == "00002902-0000-1000-8000-00805f9b34fb"
        assert await client.read_gatt_descriptor(cccd.handle) == b"\x00\x00"

        assert await client.read_gatt_char(blelink.DIS_MODEL) == b"esp32"
        assert await client.read_gatt_char(blelink.DIS_FIRMWARE) == b"1.0.0"
        assert await client.read_gatt_char(blelink.DIS_SOFTWARE) == b"1.0.0"
        info = json.loads(await client.read_gatt_char(blelink.INFO))
        assert info["beacon_id"] == BEACON_ID
        assert info["ota_state"] == "idle"
        with pytest.raises(BleakGATTProtocolError):
            await client.write_gatt_char(blelink.INFO, b"x", response=True)
        with pytest.raises(BleakError, match="at most 182"):
            await client.write_gatt_char(blelink.DATA, bytes(183), response=False)
        with pytest.raises(BleakError, match="pairing is not supported"):
            await client.pair()
    assert not connected(client)
    async with sim_client(ADDRESS, air) as client:
        assert client.mtu_size == 247  # no cap: the beacon's offer


async def test_status_written_to_control_is_answered_by_a_notification(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    await asyncio.to_thread(live)
    async with sim_client(ADDRESS, air) as client, OtaLink(client) as link:
        control = client.services.get_characteristic(blelink.CONTROL)
        assert control is not None
        cccd = control.descriptors[0]
        assert await client.read_gatt_descriptor(cccd.handle) == b"\x01\x00"
        await link.control(bytes((blelink.STATUS,)))  # protocol §8.5: STATUS 0x05
        assert await link.expect(blelink.STATUS_REPLY) == b"\x88\x00"


async def test_unknown_beacons_and_pairing_are_refused(air: Air) -> None:
    with pytest.raises(BleakError, match="was not found"):
        await BleakClient(ADDRESS, backend=SimBleakClient, air=air, timeout=0.3).connect()
    with pytest.raises(BleakError, match="pairing is not supported"):
        await BleakClient(ADDRESS, backend=SimBleakClient, air=air, pair=True).connect()
    with pytest.raises(LinkModelError, match="unknown keys"):
        LinkModel.from_json('{"throughput": 15000}')
    with pytest.raises(LinkModelError, match="loss"):
        LinkModel.from_json('{"loss": 1.5}')
    assert LinkModel.from_json('{"throughput_bytes_per_s": 15000}').throughput_bytes_per_s == 15000


# --- a release pushed through bleak --------------------------------------------------------
async def test_an_app_release_pushed_through_bleak_installs_and_commits(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    release = app_release("1.1.0", secure_version=1)
    beacon = await asyncio.to_thread(live)
    dropped = asyncio.Event()
    mark = beacon.mark()
    async with ota(ADDRESS, air, disconnected_callback=lambda _c: dropped.set()) as link:
        stats = await push(link, release)
        assert (stats.resumed_at, stats.nacks) == (0, 0)
        async with asyncio.timeout(10):
            await dropped.wait()  # DONE, then the beacon restarts: the link drops
        assert not link.client.is_connected
    off = await wait_event(beacon, lambda e: e["ev"] == "power_off", since=mark)
    assert off["end"] == "reset"
    await wait_event(beacon, lambda e: e["ev"] == "adv" and e["n"] == off["n"] + 1, since=mark)
    async with ota(ADDRESS, air) as link:
        assert await link.client.read_gatt_char(blelink.DIS_SOFTWARE) == b"1.1.0"
        assert await link.status() == 1  # on trial: this STATUS is its check-in
        await wait_event(
            beacon,
            lambda e: e["ev"] == "adv" and bytes.fromhex(e["resp"])[20] == 0,
            since=mark,
        )
        info = json.loads(await link.client.read_gatt_char(blelink.INFO))
        assert info["result"]["outcome"] == "committed"


async def test_lost_frames_are_asked_for_again_and_the_push_completes(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    release = app_release("1.1.0")
    await asyncio.to_thread(live)
    # The beacon's own MTU (247): after a NACK up to two windows (~4 KiB) wait in its data
    # buffer. navign.bleota once grew and sliced a buffer for them and, under CPU load, ran out
    # of contiguous heap (REJECT low_memory); it now reuses one buffer allocated at the OFFER.
    lossy = LinkModel(loss=0.04, seed=7)
    async with ota(ADDRESS, air, link=lossy) as link:
        stats = await push(link, release)
        lost = link.client._backend.stats.frames_lost  # type: ignore[attr-defined]
    assert lost > 0
    assert stats.nacks > 0  # a gap in the offsets: the beacon said where to restart
    assert stats.timeouts > 0  # a window's last frame lost: no answer, the window sent again


async def test_a_dropped_link_calls_back_and_a_reconnect_resumes(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    release = app_release("1.1.0")  # about 48 KB: three connections of at most 20 KB each
    await asyncio.to_thread(live)
    dropped: list[BleakClient] = []
    fragile = LinkModel(disconnect_after_bytes=20_000)
    client = sim_client(ADDRESS, air, link=fragile, disconnected_callback=dropped.append)
    resumed: list[int] = []
    for attempt in range(5):
        await client.connect()  # the same client, connected again
        stats = PushStats()
        try:
            async with OtaLink(client) as link:
                await push(link, release, stats=stats)
            break
        except SimLinkLostError:
            assert dropped == [client] * (attempt + 1)
            assert not connected(client)
        finally:
            resumed.append(stats.resumed_at)
    await client.disconnect()
    assert len(resumed) == 3
    assert resumed[0] == 0 < resumed[1] <= 20_000 < resumed[2] <= 40_000


async def test_the_disconnected_callback_runs_when_the_beacon_loses_power(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    beacon = await asyncio.to_thread(live)
    dropped = asyncio.Event()
    async with sim_client(ADDRESS, air, disconnected_callback=lambda _c: dropped.set()) as client:
        await asyncio.to_thread(beacon.cut_power)
        async with asyncio.timeout(10):
            await dropped.wait()
        assert not client.is_connected
        with pytest.raises(BleakError):  # bleak: "Service Discovery has not been performed"
            await client.read_gatt_char(blelink.DIS_MODEL)
    async with sim_client(ADDRESS, air) as client:  # waits for it to advertise again
        assert await client.read_gatt_char(blelink.DIS_MODEL) == b"esp32"


# A board whose main.py (instead of the app) drops every central 0.3 s after it connects.
DISCONNECTING_MAIN: Final = b"""
import bluetooth, time
ble = bluetooth.BLE()
ble.active(True)
ble.gatts_register_services(((bluetooth.UUID(0x180A), ((bluetooth.UUID(0x2A24), 2),)),))
ble.gap_advertise(100000, b"\\x02\\x01\\x06")
conns = []
ble.irq(lambda event, data: conns.append(data[0]) if event == 1 else None)
while True:
    time.sleep_ms(300)
    while conns:
        ble.gap_disconnect(conns.pop())
"""


async def test_the_disconnected_callback_runs_when_the_beacon_disconnects(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    await asyncio.to_thread(live, files={"main.py": DISCONNECTING_MAIN})
    dropped = asyncio.Event()
    client = sim_client(ADDRESS, air, disconnected_callback=lambda _c: dropped.set())
    await client.connect()
    assert [s.uuid for s in client.services] == ["0000180a-0000-1000-8000-00805f9b34fb"]
    async with asyncio.timeout(10):
        await dropped.wait()
    assert not connected(client)
    await client.disconnect()  # nothing left to do


async def test_throughput_shaping_slows_a_transfer(
    live: Callable[..., LiveBeacon], air: Air
) -> None:
    release = app_release("1.1.0")
    part, rate = 24_000, 8_000.0
    first = await asyncio.to_thread(live, "fast")
    async with ota(ADDRESS, air) as link:
        fast = await push(link, release, stop_after=part)
    await asyncio.to_thread(first.stop)
    await asyncio.to_thread(live, "slow")  # a new board (same address), nothing received yet
    async with ota(ADDRESS, air, link=LinkModel(throughput_bytes_per_s=rate)) as link:
        slow = await push(link, release, stop_after=part)
    assert fast.resumed_at == slow.resumed_at == 0
    assert slow.seconds >= 0.9 * part / rate  # the shaper never sends faster than its rate
    assert slow.seconds >= 2 * fast.seconds


def test_advertisement_data_decodes_names_uuid_lists_and_tx_power(air: Air) -> None:
    record = air.publish(
        ADDRESS,
        adv=bytes.fromhex("020106") + b"\x05\x09navi" + bytes.fromhex("03030a18020af4"),
        resp=bytes.fromhex("0416aafe01") + bytes.fromhex("ff"),  # a truncated structure last
        interval_us=100_000,
    )
    data = advertisement_data(record)
    assert data.local_name == "navi"
    assert data.service_uuids == ["0000180a-0000-1000-8000-00805f9b34fb"]
    assert data.tx_power == -12
    assert data.service_data == {"0000feaa-0000-1000-8000-00805f9b34fb": b"\x01"}
    assert air.withdraw(ADDRESS)
    assert not air.withdraw(ADDRESS)

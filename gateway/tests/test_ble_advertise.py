"""The gateway's release advertising (protocol §8.7): the frame as pure bytes, then the real
:class:`ReleaseAdvertiser` (dbus-fast) against a BlueZ-shaped service (:mod:`.bluez_mock`) on a
private ``dbus-daemon`` started per test. The mock runs in the test's event loop on its own bus
connection, so stopping it is a real BlueZ disappearing from a real bus."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import select
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bumble import core as bumble_core
from bumble.core import AdvertisingData
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusStr
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property
from hypothesis import given
from hypothesis import strategies as st

from navign_gateway.ble import advertise
from navign_gateway.ble.advertise import (
    ADVERTISING_DATA_SIZE,
    FRAME_SIZE,
    LEGACY_ADVERTISING_MAX,
    NAVIGN_SERVICE_UUID,
    AdvertisedRelease,
    ReleaseAdvertiser,
    ReleaseFrame,
    advertised_releases,
    parse_release_frame,
    release_frame,
)
from navign_gateway.firmware import CachedRelease

from .bluez_mock import (
    ALREADY_EXISTS,
    DOES_NOT_EXIST,
    INVALID_ARGUMENTS,
    INVALID_LENGTH,
    NOT_PERMITTED,
    BluezMock,
    Registration,
    VariantDict,
)

needs_dbus = pytest.mark.requires("cmd:dbus-daemon")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def release(
    target: str = "esp32c3", kind: str = "app", version: str = "1.2.3", secure: int = 1
) -> AdvertisedRelease:
    digest = hashlib.sha256(f"{target}/{kind}/{version}/{secure}".encode()).hexdigest()
    return AdvertisedRelease(target, kind, version, secure, digest)


# -- the frame ---------------------------------------------------------------------------------


def test_the_frame_is_laid_out_as_section_8_7_says() -> None:
    r = AdvertisedRelease("esp32s3", "image", "2.10.300-rc.1", 7, "ab" * 2 + "cd" * 30)
    frame = release_frame(r)
    assert frame == bytes([0x02, 0x32, 2, 10, 255, 7, 0xAB, 0xAB, 0xCD, 0xCD])
    decoded = parse_release_frame(frame)
    assert (decoded.target, decoded.kind) == ("esp32s3", "image")
    assert decoded.version == (2, 10, 255)  # clamped, prerelease not carried
    assert release_frame(release("esp32", "app", "0.0.1", 300))[1:6] == bytes([0x11, 0, 0, 1, 255])
    assert ADVERTISING_DATA_SIZE == 3 + 18 + FRAME_SIZE == LEGACY_ADVERTISING_MAX


@given(
    target=st.sampled_from(["esp32", "esp32c3", "esp32s3"]),
    kind=st.sampled_from(["app", "image"]),
    core=st.tuples(*[st.integers(0, 400)] * 3),
    secure=st.integers(0, 1000),
    digest=st.binary(min_size=32, max_size=32),
)
def test_a_release_round_trips_through_its_frame(
    target: str, kind: str, core: tuple[int, int, int], secure: int, digest: bytes
) -> None:
    version = ".".join(map(str, core))
    r = AdvertisedRelease(target, kind, version, secure, digest.hex())
    frame = release_frame(r)
    assert len(frame) == FRAME_SIZE
    decoded = parse_release_frame(frame)
    assert (decoded.target, decoded.kind) == (target, kind)
    assert decoded.version == tuple(min(n, 255) for n in core)
    assert decoded.secure_version == min(secure, 255)
    assert decoded.manifest_prefix == digest[:4]
    assert decoded.to_bytes() == frame


@given(body=st.binary(min_size=9, max_size=9))
def test_any_version_2_frame_parses_and_encodes_back_to_the_same_bytes(body: bytes) -> None:
    frame = bytes([0x02]) + body
    decoded = parse_release_frame(frame)  # unknown chip and kind codes are tolerated
    assert decoded.to_bytes() == frame
    if decoded.chip_code not in (1, 2, 3):
        assert decoded.target is None


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\x02" * 9, "10 bytes"), (b"\x02" * 11, "10 bytes"), (b"\x01" + b"\x00" * 9, "version")],
)
def test_other_frames_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_release_frame(data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target": "esp32c6"}, "chip code"),
        ({"kind": "bundle"}, "kind"),
        ({"version": "1.2"}, "semantic version"),
        ({"version": "1.2.3+build.5"}, "build metadata"),
        ({"secure_version": -1}, "secure_version"),
        ({"secure_version": True}, "secure_version"),
        ({"manifest_sha256": "ab" * 31}, "64 hexadecimal"),
    ],
)
def test_invalid_releases_are_refused(fields: dict[str, Any], message: str) -> None:
    good: dict[str, Any] = {
        "target": "esp32",
        "kind": "app",
        "version": "1.0.0",
        "secure_version": 0,
        "manifest_sha256": "00" * 32,
    }
    with pytest.raises(ValueError, match=message):
        AdvertisedRelease(**(good | fields))
    with pytest.raises(ValueError, match="4 bits"):
        ReleaseFrame(16, 1, (1, 2, 3), 0, b"\x00" * 4)


def test_the_cache_maps_to_the_newest_release_per_target_and_kind(tmp_path: Path) -> None:
    def cached(firmware_id: str, target: str, kind: str, version: str) -> CachedRelease:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        return CachedRelease(
            firmware_id, "fw", version, target, kind, 3, "beacon", "stable", 100,
            "11" * 32, hashlib.sha256(firmware_id.encode()).hexdigest(), now, now, False,
            tmp_path / firmware_id,
        )  # fmt: skip

    releases = [
        cached("a", "esp32c3", "app", "1.10.0"),
        cached("b", "esp32c3", "app", "1.9.0"),
        cached("c", "esp32c3", "image", "2.0.0-rc.1"),
        cached("d", "esp32c3", "image", "1.99.0"),
        cached("e", "esp32c6", "app", "9.0.0"),  # no chip code: not advertisable
    ]
    out = advertised_releases(releases)
    assert [(r.target, r.kind, r.version) for r in out] == [
        ("esp32c3", "app", "1.10.0"),
        ("esp32c3", "image", "2.0.0-rc.1"),
    ]
    assert out[0] == AdvertisedRelease.from_cached(releases[0])
    assert out[0].manifest_sha256 == releases[0].manifest_sha256


# -- a private bus with BlueZ on it ------------------------------------------------------------


@pytest.fixture
def bus_address(tmp_path: Path) -> Iterator[str]:
    """A dbus-daemon of our own (a unix socket path is limited to ~107 bytes: a short dir)."""
    socket_dir = Path(tempfile.mkdtemp(prefix="navign-dbus-"))
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket_dir / "bus"))
    with (tmp_path / "dbus-daemon.log").open("wb") as errors:
        daemon = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--print-address", "--nofork"],
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    try:
        assert daemon.stdout is not None
        ready, _, _ = select.select([daemon.stdout], [], [], 10.0)
        address = daemon.stdout.readline().decode().strip() if ready else ""
        if not address:
            raise RuntimeError(f"dbus-daemon did not start: {(tmp_path / 'dbus-daemon.log')}")
        yield address
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=5)
        if daemon.stdout is not None:
            daemon.stdout.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(advertise, "RETRY_INITIAL", 0.05)
    monkeypatch.setattr(advertise, "RETRY_MAX", 0.2)
    monkeypatch.setattr(advertise, "REREGISTER_DELAY", 0.05)
    monkeypatch.setattr(advertise, "CALL_TIMEOUT", 2.0)
    monkeypatch.setattr(advertise, "UPDATE_WAIT", 5.0)


@pytest.fixture
async def bluez(bus_address: str) -> AsyncIterator[BluezMock]:
    mock = BluezMock(bus_address)
    await mock.start()
    yield mock
    await mock.stop()


@pytest.fixture
async def advertiser(bus_address: str) -> AsyncIterator[ReleaseAdvertiser]:
    adv = ReleaseAdvertiser("hci0", bus_address)
    yield adv
    await adv.stop()


def on_air(mock: BluezMock) -> dict[tuple[str, str], Registration]:
    """The mock's advertisements by (target, kind) of their frames."""
    out: dict[tuple[str, str], Registration] = {}
    for registration in mock.active.values():
        decoded = parse_release_frame(registration.service_data[NAVIGN_SERVICE_UUID])
        assert decoded.target is not None
        assert decoded.kind is not None
        out[(decoded.target, decoded.kind)] = registration
    return out


def frames(mock: BluezMock) -> dict[tuple[str, str], bytes]:
    return {k: r.service_data[NAVIGN_SERVICE_UUID] for k, r in on_air(mock).items()}


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` every 10 ms, for at most 5 s."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the condition did not hold within 5 s")


@pytest.fixture
def signals_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries so slow that only a D-Bus signal can wake the advertiser within a test."""
    monkeypatch.setattr(advertise, "RETRY_INITIAL", 60.0)
    monkeypatch.setattr(advertise, "RETRY_MAX", 60.0)


@needs_dbus
async def test_one_broadcast_advertisement_per_release_with_its_frame(
    bluez: BluezMock, advertiser: ReleaseAdvertiser
) -> None:
    releases = [release("esp32c3", "app"), release("esp32c3", "image"), release("esp32", "app")]
    await advertiser.start()
    await advertiser.update(releases)
    await bluez.wait_for(lambda: len(bluez.active) == 3)
    assert frames(bluez) == {r.key: release_frame(r) for r in releases}
    for registration in bluez.active.values():
        assert registration.properties["Type"] == "broadcast"
        assert list(registration.service_data) == [NAVIGN_SERVICE_UUID]
        assert registration.properties["LocalName"] is None
        assert registration.properties["Includes"] == []
        assert len(registration.advertising_data) == ADVERTISING_DATA_SIZE == 31
        # An independent decoder reads what BlueZ would put on air.
        ad = AdvertisingData.from_bytes(registration.advertising_data)
        assert bytes(ad) == registration.advertising_data
        assert [t for t, _ in ad.ad_structures] == [
            AdvertisingData.Type.FLAGS,
            AdvertisingData.Type.SERVICE_DATA_128_BIT_UUID,
        ]
        service_data = ad.get(AdvertisingData.Type.SERVICE_DATA_128_BIT_UUID)
        assert service_data is not None
        service, payload = service_data
        assert service == bumble_core.UUID(NAVIGN_SERVICE_UUID)
        assert bytes(payload) == registration.service_data[NAVIGN_SERVICE_UUID]
    assert sorted(advertiser.registered, key=str) == sorted(releases, key=str)


@needs_dbus
async def test_update_replaces_only_what_changed_and_the_same_set_is_a_no_op(
    bluez: BluezMock, advertiser: ReleaseAdvertiser
) -> None:
    app, image = release("esp32c3", "app", "1.0.0"), release("esp32c3", "image", "1.0.0")
    await advertiser.start()
    await advertiser.update([app, image])
    await bluez.wait_for(lambda: len(bluez.active) == 2)
    image_path = on_air(bluez)[image.key].path
    bluez.events.clear()
    calls = bluez.register_calls

    await advertiser.update([image, app])  # the same set, in another order
    assert bluez.register_calls == calls
    assert bluez.events == []

    newer = release("esp32c3", "app", "1.1.0", secure=2)
    await advertiser.update([newer, image])
    await bluez.wait_for(lambda: frames(bluez).get(app.key) == release_frame(newer))
    kinds = [kind for kind, _ in bluez.events]
    assert kinds == ["unregister", "register"]
    assert on_air(bluez)[image.key].path == image_path  # untouched

    bluez.events.clear()
    await advertiser.update([image])
    await bluez.wait_for(lambda: len(bluez.active) == 1)
    assert [kind for kind, _ in bluez.events] == ["unregister"]

    with pytest.raises(ValueError, match="two releases"):
        await advertiser.update([image, release("esp32c3", "image", "3.0.0")])
    assert list(frames(bluez).values()) == [release_frame(image)]


@needs_dbus
async def test_no_more_advertisements_than_instances_newest_first(
    bus_address: str, advertiser: ReleaseAdvertiser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="navign_gateway.ble.advertise")
    bluez = BluezMock(bus_address, max_instances=2)
    await bluez.start()
    try:
        releases = [
            release("esp32", "app", "1.0.0"),
            release("esp32c3", "app", "3.0.0"),
            release("esp32s3", "image", "1.5.0"),
            release("esp32c3", "image", "2.0.0"),
        ]
        await advertiser.start()
        await advertiser.update(releases)
        await bluez.wait_for(lambda: len(bluez.active) == 2)
        assert set(frames(bluez)) == {("esp32c3", "app"), ("esp32c3", "image")}
        assert [str(r) for r in advertiser.left_out] == ["esp32s3 image 1.5.0", "esp32 app 1.0.0"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "not advertised: esp32s3 image 1.5.0, esp32 app 1.0.0" in warnings[0]
        assert bluez.free_instances == 0

        # Without the newest, the next newest takes the instance that came free.
        await advertiser.update(releases[:1] + releases[2:])
        await bluez.wait_for(lambda: ("esp32s3", "image") in frames(bluez))
        assert set(frames(bluez)) == {("esp32c3", "image"), ("esp32s3", "image")}
        assert [str(r) for r in advertiser.left_out] == ["esp32 app 1.0.0"]
    finally:
        await advertiser.stop()
        await bluez.stop()


@needs_dbus
async def test_stop_unregisters_everything_and_leaves_the_bus(
    bus_address: str, bluez: BluezMock, advertiser: ReleaseAdvertiser
) -> None:
    await advertiser.start()
    await advertiser.update([release("esp32c3", "app"), release("esp32c3", "image")])
    await bluez.wait_for(lambda: len(bluez.active) == 2)
    owner = next(iter(bluez.active.values())).owner
    bluez.events.clear()
    await advertiser.stop()
    assert bluez.active == {}
    assert sorted(kind for kind, _ in bluez.events) == ["unregister", "unregister"]
    # The connection is gone too: the bus no longer knows the advertiser's unique name.
    probe = await MessageBus(bus_address, BusType.SESSION).connect()
    try:
        reply = await probe.call(
            Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
                body=[owner],
            )
        )  # fmt: skip
        assert reply.body == [False]
    finally:
        probe.disconnect()


@needs_dbus
async def test_without_bluez_it_retries_quietly_and_registers_when_bluez_appears(
    bus_address: str, advertiser: ReleaseAdvertiser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="navign_gateway.ble.advertise")
    await advertiser.start()
    await advertiser.update([release("esp32c3", "app")])
    for _ in range(50):  # bounded: about 0.5 s; retries every RETRY_MAX (0.2 s) at most
        if sum("failed again" in r.getMessage() for r in caplog.records) >= 2:
            break
        await asyncio.sleep(0.02)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no org.bluez on the bus" in warnings[0].getMessage()
    assert sum("failed again" in r.getMessage() for r in caplog.records) >= 2

    bluez = BluezMock(bus_address)
    await bluez.start()
    try:
        await bluez.wait_for(lambda: len(bluez.active) == 1)
        await until(lambda: any("recovered" in r.getMessage() for r in caplog.records))
        assert advertiser.registered == [release("esp32c3", "app")]
    finally:
        await advertiser.stop()
        await bluez.stop()


async def test_without_a_bus_it_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="navign_gateway.ble.advertise")
    adv = ReleaseAdvertiser("hci0", f"unix:path={tmp_path}/no-such-bus")
    await adv.start()
    await adv.update([release()])
    await asyncio.sleep(0.3)
    await adv.stop()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@needs_dbus
async def test_a_missing_adapter_is_waited_for_and_used_when_it_appears(
    bus_address: str,
    signals_only: None,
    advertiser: ReleaseAdvertiser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="navign_gateway.ble.advertise")
    bluez = BluezMock(bus_address, adapter=None)
    await bluez.start()
    try:
        await advertiser.start()
        await advertiser.update([release("esp32c3", "app")])
        assert bluez.active == {}
        assert ["adapter hci0 not found" in r.getMessage() for r in caplog.records] == [True]
        bluez.add_adapter("hci0")
        await bluez.wait_for(lambda: len(bluez.active) == 1)

        # The adapter goes away (BlueZ releases its advertisements) and comes back.
        await bluez.remove_adapter()
        assert bluez.active == {}
        bluez.add_adapter("hci0")
        await bluez.wait_for(lambda: len(bluez.active) == 1)
        assert len(bluez.active) == 1
    finally:
        await advertiser.stop()
        await bluez.stop()


@needs_dbus
@pytest.mark.parametrize("clean", [True, False], ids=["clean-stop", "crash"])
async def test_a_restarted_bluez_gets_the_advertisements_again(
    bus_address: str, signals_only: None, advertiser: ReleaseAdvertiser, clean: bool
) -> None:
    releases = [release("esp32c3", "app"), release("esp32s3", "image")]
    first = BluezMock(bus_address)
    await first.start()
    await advertiser.start()
    await advertiser.update(releases)
    await first.wait_for(lambda: len(first.active) == 2)
    await first.stop(release=clean)

    second = BluezMock(bus_address)
    await second.start()
    try:
        await second.wait_for(lambda: len(second.active) == 2)
        assert frames(second) == {r.key: release_frame(r) for r in releases}
        assert [kind for kind, _ in second.events] == ["register", "register"]
    finally:
        await advertiser.stop()
        await second.stop()


@needs_dbus
async def test_a_released_advertisement_is_registered_again(
    bluez: BluezMock, advertiser: ReleaseAdvertiser
) -> None:
    app, image = release("esp32c3", "app"), release("esp32c3", "image")
    await advertiser.start()
    await advertiser.update([app, image])
    await bluez.wait_for(lambda: len(bluez.active) == 2)
    dropped = on_air(bluez)[app.key].path
    kept = on_air(bluez)[image.key].path
    await bluez.release(dropped)
    await bluez.wait_for(lambda: len(bluez.active) == 2)
    again = on_air(bluez)
    assert again[app.key].path != dropped  # a new object, the old one is gone from the bus
    assert again[image.key].path == kept
    assert frames(bluez)[app.key] == release_frame(app)


@needs_dbus
async def test_an_instance_another_client_frees_is_taken(
    bus_address: str, signals_only: None, advertiser: ReleaseAdvertiser
) -> None:
    bluez = BluezMock(bus_address, max_instances=2)
    await bluez.start()
    other = await MessageBus(bus_address, BusType.SESSION).connect()
    try:
        other.export("/other/ad", HandMadeAdvertisement("broadcast", b"other"))
        register = ("RegisterAdvertisement", "oa{sv}", ["/other/ad", {}])
        assert await call_manager(other, *register) == "ok"
        older, newer = release("esp32", "app", "1.0.0"), release("esp32c3", "app", "2.0.0")
        await advertiser.start()
        await advertiser.update([older, newer])
        await bluez.wait_for(lambda: len(bluez.active) == 2)
        assert advertiser.registered == [newer]
        assert advertiser.left_out == [older]
        # The other client leaves: BlueZ announces the free instance (PropertiesChanged).
        assert await call_manager(other, "UnregisterAdvertisement", "o", ["/other/ad"]) == "ok"
        await bluez.wait_for(lambda: set(frames(bluez)) == {older.key, newer.key})
        await until(lambda: advertiser.left_out == [])
    finally:
        other.disconnect()
        await advertiser.stop()
        await bluez.stop()


# -- the mock itself: BlueZ's answers ---------------------------------------------------------


class HandMadeAdvertisement(ServiceInterface):
    """Whatever properties a test wants BlueZ to read."""

    def __init__(self, kind: str, service_data: bytes) -> None:
        super().__init__("org.bluez.LEAdvertisement1")
        self.kind = kind
        self.data = service_data

    @dbus_property(access=PropertyAccess.READ, name="Type")
    def type_(self) -> DBusStr:
        return self.kind

    @dbus_property(access=PropertyAccess.READ, name="ServiceData")
    def service_data(self) -> VariantDict:
        return {NAVIGN_SERVICE_UUID: Variant("ay", self.data)}


async def call_manager(bus: MessageBus, member: str, signature: str, body: list[Any]) -> str:
    reply = await bus.call(
        Message(
            destination="org.bluez", path="/org/bluez/hci0",
            interface="org.bluez.LEAdvertisingManager1", member=member, signature=signature,
            body=body,
        )
    )  # fmt: skip
    if reply.message_type is MessageType.ERROR:
        return str(reply.error_name)
    return "ok"


@needs_dbus
async def test_the_mock_answers_as_bluez_does(bus_address: str) -> None:
    bluez = BluezMock(bus_address, max_instances=1)
    await bluez.start()
    client = await MessageBus(bus_address, BusType.SESSION).connect()
    try:
        client.export("/ad/wrong_type", HandMadeAdvertisement("loud", b"\x00" * 10))
        client.export("/ad/too_long", HandMadeAdvertisement("broadcast", b"\x00" * 11))
        client.export("/ad/good", HandMadeAdvertisement("broadcast", b"\x00" * 10))
        client.export("/ad/second", HandMadeAdvertisement("broadcast", b"\x00" * 10))
        objects = await client.call(
            Message(
                destination="org.bluez", path="/", interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )  # fmt: skip
        adapter = objects.body[0]["/org/bluez/hci0"]
        assert adapter["org.bluez.Adapter1"]["Address"].value == bluez.address
        manager = adapter["org.bluez.LEAdvertisingManager1"]
        assert (manager["SupportedInstances"].value, manager["ActiveInstances"].value) == (1, 0)

        register = "RegisterAdvertisement"
        assert await call_manager(client, register, "oa{sv}", ["/ad/wrong_type", {}]) == (
            INVALID_ARGUMENTS
        )
        assert await call_manager(client, register, "oa{sv}", ["/ad/too_long", {}]) == (
            INVALID_LENGTH
        )
        assert await call_manager(client, register, "oa{sv}", ["/ad/good", {}]) == "ok"
        assert await call_manager(client, register, "oa{sv}", ["/ad/good", {}]) == ALREADY_EXISTS
        assert await call_manager(client, register, "oa{sv}", ["/ad/second", {}]) == NOT_PERMITTED
        unregister = "UnregisterAdvertisement"
        assert await call_manager(client, unregister, "o", ["/ad/second"]) == DOES_NOT_EXIST
        assert await call_manager(client, unregister, "o", ["/ad/good"]) == "ok"
        assert bluez.active == {}
        # A client that leaves the bus loses its advertisements.
        assert await call_manager(client, register, "oa{sv}", ["/ad/good", {}]) == "ok"
        client.disconnect()
        await bluez.wait_for(lambda: bluez.active == {})
        assert bluez.events[-1] == ("disconnect", "/ad/good")
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        await bluez.stop()

"""A bleak backend that reaches simulated beacons: test-only, never used in production.

The gateway talks BLE only through bleak's public classes; in production bleak picks BlueZ. In
tests, the same unmodified classes are given this backend::

    BleakScanner(callback, backend=SimBleakScanner, air=Air(path))        # air= is optional
    BleakClient(address, backend=SimBleakClient, link=LinkModel(...))    # link= is optional
    await BleakScanner.find_device_by_address(address, backend=SimBleakScanner)

bleak 3.1 takes the backend *class* (``backend=``, the class itself, not an instance) and
forwards unknown keyword arguments to its constructor: that is how ``air=`` and ``link=`` arrive.
Without them the air directory comes from ``NAVIGN_SIM_AIR`` (:mod:`navign_firmware.air`) and the
link model from ``NAVIGN_SIM_BLE_LINK``, so a gateway daemon started as a separate process only
needs its environment set and ``backend=`` chosen. (bleak types the keyword arguments of its
class methods ``discover`` and ``find_device_by_*``: under mypy, give those the air through the
environment.)

Scanner (:class:`SimBleakScanner`): polls the air every :data:`POLL_INTERVAL` seconds and reports
each beacon once per advertising interval (at most once a poll), as a scanner hears every
advertisement, with a :class:`~bleak.backends.device.BLEDevice` (``details`` is the
:class:`~navign_firmware.air.Advertisement`) and an ``AdvertisementData`` decoded from the AD
structures of the advertising data and, when scanning is active (bleak's default), of the scan
response: flags, manufacturer data (the iBeacon frame under 0x004C), service data (the Navign
status frame under its 128-bit UUID), local name, TX power. ``service_uuids`` lists only the UUIDs
of the UUID-list AD types, and a ``service_uuids`` filter matches only those, as BlueZ does
(its ``eir.c`` keeps service-data UUIDs apart): a Navign beacon, which sends its UUID as service
data only (protocol §8.4), is not matched by a filter on that UUID; filter on ``service_data``.
Passive scanning sends no scan request, so the scan response (the Navign frame) is not seen.

Client (:class:`SimBleakClient`): finds the beacon's GATT port on the air by address (waiting up
to the timeout for it to advertise), connects over loopback with the framing of
``host/bluetooth.py``, negotiates the MTU and builds ``services`` from the board's CONNECTED
description (characteristics keyed by their value handle, a CCCD descriptor under each
notifying one). Reads, writes with and without response, notifications, ``disconnect`` and the
disconnected callback (called on every end of an established link, as the BlueZ backend does:
the board reset or lost power or called ``gap_disconnect``, the link model dropped it, or
``disconnect()``). A write without response carries at most MTU - 3 bytes, one with response
512. Pairing is not supported and raises :class:`BleakError`. A board serves one central at a
time (``host/bluetooth.py``): a second client connecting drops the first one's link.

Link model (:class:`LinkModel`), applied by the client to what the central sends. The
``NAVIGN_SIM_BLE_LINK`` environment variable holds it as a JSON object; every key is optional:

- ``mtu`` (int, 23-517, default 517): the ATT MTU the central asks for; the beacon offers 247,
  the smaller one wins.
- ``latency_ms`` (number >= 0, default 0): one-way delay of every frame the central sends (a
  write with response or a read therefore waits at least this long).
- ``throughput_bytes_per_s`` (number > 0 or null, default null: unlimited): written payload bytes
  per second on one connection; every write waits for its share (benchmarks use 15000).
- ``loss`` (0-1, default 0): probability that a write without response is lost (never delivered,
  no error: as on the air).
- ``seed`` (int, default 0): seeds the model's random generator (loss, random disconnects), one
  generator per model and so per process for the environment's model: runs are reproducible.
- ``connect_ms`` (number >= 0, default 0): connection setup time.
- ``disconnect_after_bytes`` (int > 0 or null): the link drops when a write would take one
  connection past this many payload bytes.
- ``disconnect_probability`` (0-1, default 0): probability that the link drops at a write.

For example ``{"throughput_bytes_per_s": 15000, "latency_ms": 7.5, "loss": 0.01, "seed": 1}``.
When the link drops at a write, that write raises :class:`SimLinkLostError` (a
:class:`BleakError`) and the disconnected callback runs.

Public: :class:`SimBleakScanner`, :class:`SimBleakClient`, :class:`LinkModel`,
:class:`LinkModelError`, :class:`LinkStats`, :class:`SimLinkLostError`, :func:`default_link`,
:func:`advertisement_data`, :data:`LINK_ENV`, :data:`POLL_INTERVAL`, and the aliases
:data:`client_backend` and :data:`scanner_backend` that the gateway's ``ble.backend`` looks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import (
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from bleak.uuids import normalize_uuid_16, normalize_uuid_str

from navign_firmware.air import Advertisement, Air, AirError, normalize_address

logger = logging.getLogger(__name__)

LINK_ENV: Final = "NAVIGN_SIM_BLE_LINK"
#: Seconds between two looks at the air (scanner, and a client waiting for its beacon).
POLL_INTERVAL: Final = 0.1
#: An ATT request unanswered this long ends the link (ATT's own transaction timeout is 30 s).
REQUEST_TIMEOUT: Final = 30.0
#: A board advertises a moment before its GATT server listens: refused connects are retried.
CONNECT_RETRY: Final = 0.05
#: Shaping carries a lateness this small over to the next write (asyncio oversleeps a little).
SHAPING_SLACK: Final = 0.002

# The framing of host/bluetooth.py: op u8, handle u16 LE, length u16 LE, data.
_CONNECT, _WRITE, _WRITE_NR, _READ, _DISCONNECT = 0x01, 0x02, 0x03, 0x04, 0x05
_CONNECTED, _WRITTEN, _READ_REPLY, _REFUSED = 0x81, 0x82, 0x84, 0x8E
_NOTIFY, _DISCONNECTED = 0x10, 0x11
_HEAD = struct.Struct("<BHH")
_CCCD = normalize_uuid_16(0x2902)
_F_NOTIFY, _F_INDICATE = 0x10, 0x20
_PAIRING = "pairing is not supported by the simulated BLE link"


# --- the link model ------------------------------------------------------------------------
class LinkModelError(ValueError):
    """A bad link model (``NAVIGN_SIM_BLE_LINK`` or arguments)."""


@dataclass(frozen=True, slots=True)
class LinkModel:
    """How the simulated radio link behaves; see the module docstring for each field."""

    mtu: int = 517
    latency_ms: float = 0.0
    throughput_bytes_per_s: float | None = None
    loss: float = 0.0
    seed: int = 0
    connect_ms: float = 0.0
    disconnect_after_bytes: int | None = None
    disconnect_probability: float = 0.0
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def number(name: str, value: object, lo: float, hi: float = math.inf) -> None:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not lo <= value <= hi:  # type: ignore[operator]
                raise LinkModelError(f"{name}: {value!r} is not a number in [{lo}, {hi}]")

        def integer(name: str, value: object, lo: int, hi: float = math.inf) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise LinkModelError(f"{name}: {value!r} is not an integer in [{lo}, {hi}]")

        integer("mtu", self.mtu, 23, 517)
        number("latency_ms", self.latency_ms, 0, 60_000)
        if self.throughput_bytes_per_s is not None:
            number("throughput_bytes_per_s", self.throughput_bytes_per_s, 1)
        number("loss", self.loss, 0, 1)
        integer("seed", self.seed, -(2**63), 2**63)
        number("connect_ms", self.connect_ms, 0, 60_000)
        if self.disconnect_after_bytes is not None:
            integer("disconnect_after_bytes", self.disconnect_after_bytes, 1)
        number("disconnect_probability", self.disconnect_probability, 0, 1)
        object.__setattr__(self, "rng", random.Random(self.seed))  # noqa: S311 - a simulation

    @classmethod
    def from_json(cls, text: str) -> LinkModel:
        """Parse the JSON object of ``NAVIGN_SIM_BLE_LINK``; raises :class:`LinkModelError`."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise LinkModelError(f"{LINK_ENV} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise LinkModelError(f"{LINK_ENV} must be a JSON object")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise LinkModelError(f"{LINK_ENV}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**doc)


_default: tuple[str, LinkModel] | None = None


def default_link() -> LinkModel:
    """The link model of ``NAVIGN_SIM_BLE_LINK`` (a perfect link when unset); one instance (and
    random generator) per process while the variable does not change."""
    global _default
    text = os.environ.get(LINK_ENV, "").strip()
    if _default is None or _default[0] != text:
        _default = (text, LinkModel.from_json(text) if text else LinkModel())
    return _default[1]


@dataclass(slots=True)
class LinkStats:
    """What one client sent: payload bytes, writes, write-without-response frames lost."""

    bytes_sent: int = 0
    writes: int = 0
    frames_lost: int = 0


class SimLinkLostError(BleakError):
    """The link model dropped the link during a write."""


# --- advertising ---------------------------------------------------------------------------
def _uuid_le(data: bytes) -> str:
    if len(data) == 2:
        return normalize_uuid_16(int.from_bytes(data, "little"))
    if len(data) == 4:
        return f"{int.from_bytes(data, 'little'):08x}-0000-1000-8000-00805f9b34fb"
    return str(uuid.UUID(bytes=bytes(reversed(data))))


def _ad_structures(data: bytes) -> list[tuple[int, bytes]]:
    # (type, value) of each AD structure; parsing stops at a zero length or a structure running
    # past the end, as BlueZ's eir_parse does.
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0 or pos + 1 + length > len(data):
            break
        out.append((data[pos + 1], data[pos + 2 : pos + 1 + length]))
        pos += 1 + length
    return out


def advertisement_data(record: Advertisement, *, scan_response: bool = True) -> AdvertisementData:
    """What a scanner makes of ``record``: advertising data then (when active) scan response."""
    name: str | None = None
    tx_power: int | None = None
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    uuids: list[str] = []
    payloads = [record.adv]
    if scan_response and record.resp is not None:
        payloads.append(record.resp)
    for payload in payloads:
        for ad_type, value in _ad_structures(payload):
            if ad_type in (0x02, 0x03, 0x04, 0x05, 0x06, 0x07):  # UUID lists: 16, 32, 128 bit
                size = {0x02: 2, 0x03: 2, 0x04: 4, 0x05: 4, 0x06: 16, 0x07: 16}[ad_type]
                for i in range(0, len(value) - size + 1, size):
                    found = _uuid_le(value[i : i + size])
                    if found not in uuids:
                        uuids.append(found)
            elif ad_type in (0x08, 0x09):  # shortened / complete local name
                name = value.rstrip(b"\x00").decode("utf-8", errors="replace")
            elif ad_type == 0x0A and value:
                tx_power = int.from_bytes(value[:1], "little", signed=True)
            elif ad_type in (0x16, 0x20, 0x21):  # service data: 16, 32, 128-bit UUID
                size = {0x16: 2, 0x20: 4, 0x21: 16}[ad_type]
                if len(value) >= size:
                    service_data[_uuid_le(value[:size])] = value[size:]
            elif ad_type == 0xFF and len(value) >= 2:
                manufacturer[int.from_bytes(value[:2], "little")] = value[2:]
    return AdvertisementData(
        local_name=name,
        manufacturer_data=manufacturer,
        service_data=service_data,
        service_uuids=uuids,
        tx_power=tx_power,
        rssi=record.rssi,
        platform_data=(record,),
    )


def _air(air: Air | None) -> Air:
    if air is not None:
        return air
    try:
        return Air()
    except AirError as exc:
        raise BleakError(str(exc)) from None


class SimBleakScanner(BaseBleakScanner):
    """bleak's scanner interface over the air (see the module docstring)."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        air: Air | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        if scanning_mode not in ("active", "passive"):
            raise BleakError(f"scanning_mode must be 'active' or 'passive', not {scanning_mode!r}")
        self._active = scanning_mode == "active"
        self._air = air
        self._task: asyncio.Task[None] | None = None
        # address -> (when last reported, the record reported)
        self._reported: dict[str, tuple[float, Advertisement]] = {}

    async def start(self) -> None:
        if self._task is not None:
            return
        air = _air(self._air)
        self.seen_devices = {}
        self._reported = {}
        self._task = asyncio.create_task(self._scan(air), name="navign-sim-scanner")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _scan(self, air: Air) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                snapshot = await asyncio.to_thread(air.snapshot)
                failing = False
            except OSError as exc:
                if not failing:
                    logger.warning("cannot read the air %s: %s", air.path, exc)
                failing = True
                snapshot = {}
            self._deliver(snapshot, loop.time())
            await asyncio.sleep(POLL_INTERVAL)

    def _deliver(self, snapshot: dict[str, Advertisement], now: float) -> None:
        for address in set(self._reported) - set(snapshot):
            del self._reported[address]
            self.seen_devices.pop(address, None)
        for address, record in snapshot.items():
            last = self._reported.get(address)
            if last is not None and last[1] == record and now - last[0] < record.interval_us / 1e6:
                continue
            self._reported[address] = (now, record)
            adv = advertisement_data(record, scan_response=self._active)
            if not self.is_allowed_uuid(adv.service_uuids):
                continue
            device = self.create_or_update_device(address, address, adv.local_name, record, adv)
            try:
                self.call_detection_callbacks(device, adv)
            except Exception:
                logger.exception("a detection callback failed")


# --- the client ----------------------------------------------------------------------------
class SimBleakClient(BaseBleakClient):
    """bleak's client interface over a simulated beacon's GATT link (see the module docstring)."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        services: set[str] | None = None,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        air: Air | None = None,
        link: LinkModel | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        try:
            self.address = normalize_address(self.address)
        except AirError as exc:
            raise BleakError(str(exc)) from None
        self._record = (
            address_or_ble_device.details
            if isinstance(address_or_ble_device, BLEDevice)
            and isinstance(address_or_ble_device.details, Advertisement)
            else None
        )
        self._air = air
        self._link = link
        self._requested = services
        self._model = link or LinkModel()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._sender_task: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._pending: asyncio.Future[tuple[int, bytes]] | None = None
        self._request_lock = asyncio.Lock()
        self._notify: dict[int, NotifyCallback] = {}
        self._values: dict[int, bytes] = {}
        self._connected = False
        self._mtu = 23
        self._sent = 0  # payload bytes on this connection
        self._free_at = 0.0  # when the shaped link has sent what it was given
        self.stats = LinkStats()

    # --- connecting ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        # The local name it advertises, else what BlueZ shows: the address with dashes.
        local = None if self._record is None else advertisement_data(self._record).local_name
        return local or self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        return self._mtu

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError(_PAIRING)

    async def unpair(self) -> None:
        raise BleakError(_PAIRING)

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if pair:
            raise BleakError(_PAIRING)
        if self._writer is not None:
            raise BleakError("Client is already connected")
        timeout = float(kwargs.get("timeout", self._timeout))
        self._model = self._link or default_link()
        air = _air(self._air)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        record = await self._find(air, deadline)
        if not record.connectable or record.gatt_port is None:
            raise BleakError(f"{self.address} does not advertise as connectable")
        self._record = record
        try:
            async with asyncio.timeout_at(deadline):
                if self._model.connect_ms:
                    await asyncio.sleep(self._model.connect_ms / 1000)
                await self._open(record.gatt_port)
                mtu = self._model.mtu
                op, data = await self._request(_CONNECT, 0, struct.pack("<H", mtu))
        except TimeoutError:
            self._link_down("connect timed out", notify=False)
            raise
        except OSError as exc:
            self._link_down("connect failed", notify=False)
            raise BleakError(f"cannot connect to {self.address}: {exc}") from exc
        except BaseException:
            self._link_down("connect failed", notify=False)
            raise
        if op != _CONNECTED:
            self._link_down("connect failed", notify=False)
            raise BleakError(f"unexpected reply {op:#x} to CONNECT")
        try:
            desc = json.loads(data)
            self._mtu = int(desc["mtu"])
            self.services = self._build_services(desc["services"])
        except (ValueError, KeyError, TypeError) as exc:
            self._link_down("connect failed", notify=False)
            raise BleakError(f"bad service description from the beacon: {exc}") from None
        self._connected = True
        logger.debug("connected to %s (port %d, MTU %d)", self.address, record.gatt_port, self._mtu)

    async def _find(self, air: Air, deadline: float) -> Advertisement:
        loop = asyncio.get_running_loop()
        while True:
            record = await asyncio.to_thread(air.get, self.address)
            if record is not None:
                return record
            if loop.time() + POLL_INTERVAL > deadline:
                raise BleakDeviceNotFoundError(
                    self.address, f"Device with address {self.address} was not found."
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def _open(self, port: int) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(CONNECT_RETRY)  # bounded by the caller's deadline
        self._writer = writer
        self._sent = 0
        self._free_at = 0.0
        self._outbox = asyncio.Queue()
        self._reader_task = asyncio.create_task(
            self._read(reader, writer), name="navign-sim-gatt-rx"
        )
        self._sender_task = asyncio.create_task(self._send(writer), name="navign-sim-gatt-tx")

    def _build_services(self, described: list[dict[str, Any]]) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        handle = 0
        for entry in described:
            handle += 1
            service = BleakGATTService(entry, handle, normalize_uuid_str(entry["uuid"]))
            chars = entry["chars"]
            if self._requested is None or service.uuid in self._requested:
                collection.add_service(service)
            for char in chars:
                handle = int(char["handle"])
                flags = int(char["flags"])
                props: list[CharacteristicPropertyName] = [
                    name for bit, name in CHARACTERISTIC_PROPERTIES.items() if flags & bit
                ]
                characteristic = BleakGATTCharacteristic(
                    char, handle, normalize_uuid_str(char["uuid"]), props,
                    lambda: self._mtu - 3, service,
                )  # fmt: skip
                if flags & (_F_NOTIFY | _F_INDICATE):
                    handle += 1
                if service.handle not in collection.services:
                    continue
                collection.add_characteristic(characteristic)
                if flags & (_F_NOTIFY | _F_INDICATE):
                    collection.add_descriptor(
                        BleakGATTDescriptor(None, handle, _CCCD, characteristic)
                    )
        return collection

    async def disconnect(self) -> None:
        writer = self._writer
        if writer is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(_HEAD.pack(_DISCONNECT, 0, 0))
        self._link_down("disconnected by the central")
        task = self._reader_task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=10)
            if not done:
                task.cancel()

    def _link_down(self, reason: str, *, notify: bool = True) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        was_connected, self._connected = self._connected, False
        writer.close()
        if self._sender_task is not None:
            self._sender_task.cancel()
        # The reader sees the end of the stream and stops by itself.
        pending = self._pending
        if pending is not None and not pending.done():
            pending.set_exception(BleakError(f"{self.address}: {reason}"))
        self.services = None
        self._notify.clear()
        self._mtu = 23
        logger.debug("link to %s down: %s", self.address, reason)
        if was_connected and notify and self._disconnected_callback is not None:
            self._disconnected_callback()

    # --- the wire ------------------------------------------------------------------------
    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "the link went down"
        try:
            while True:
                op, handle, length = _HEAD.unpack(await reader.readexactly(_HEAD.size))
                data = await reader.readexactly(length) if length else b""
                if op == _NOTIFY:
                    self._values[handle] = data
                    callback = self._notify.get(handle)
                    if callback is not None:
                        try:
                            callback(bytearray(data))
                        except Exception:
                            logger.exception("a notification callback failed")
                elif op == _DISCONNECTED:
                    reason = "the beacon disconnected"
                    break
                elif self._pending is not None and not self._pending.done():
                    self._pending.set_result((op, data))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:  # not a link the client has left (and replaced) already
                self._link_down(reason)

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                at, frame = await self._outbox.get()
                if at > loop.time():
                    await asyncio.sleep(at - loop.time())
                writer.write(frame)
                await writer.drain()

    def _enqueue(self, op: int, handle: int, data: bytes) -> None:
        at = asyncio.get_running_loop().time() + self._model.latency_ms / 1000
        self._outbox.put_nowait((at, _HEAD.pack(op, handle, len(data)) + data))

    async def _request(self, op: int, handle: int, data: bytes) -> tuple[int, bytes]:
        async with self._request_lock:
            if self._writer is None:
                raise BleakError("Not connected")
            future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
            self._pending = future
            try:
                self._enqueue(op, handle, data)
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    return await future
            except TimeoutError:
                self._link_down("ATT request timed out")
                raise BleakError(f"{self.address}: no answer in {REQUEST_TIMEOUT} s") from None
            finally:
                self._pending = None

    async def _shape(self, size: int) -> None:
        rate = self._model.throughput_bytes_per_s
        if not rate:
            return
        now = asyncio.get_running_loop().time()
        start = self._free_at if self._free_at > now - SHAPING_SLACK else now
        self._free_at = start + size / rate
        if self._free_at > now:
            await asyncio.sleep(self._free_at - now)

    def _check(self) -> None:
        if not self._connected:
            raise BleakError("Not connected")

    # --- GATT ----------------------------------------------------------------------------
    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        self._check()
        if use_cached and characteristic.handle in self._values:
            return bytearray(self._values[characteristic.handle])
        op, data = await self._request(_READ, characteristic.handle, b"")
        if op == _REFUSED:
            raise BleakGATTProtocolError(BleakGATTProtocolErrorCode.READ_NOT_PERMITTED)
        self._values[characteristic.handle] = data
        return bytearray(data)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        self._check()
        payload = bytes(data)
        limit = 512 if response else self._mtu - 3
        if len(payload) > limit:
            kind = "with" if response else "without"
            raise BleakError(f"a write {kind} response carries at most {limit} bytes here")
        model = self._model
        over = (
            model.disconnect_after_bytes is not None
            and self._sent + len(payload) > model.disconnect_after_bytes
        )
        if over or (
            model.disconnect_probability and model.rng.random() < model.disconnect_probability
        ):
            self._link_down("the link model dropped the link")
            raise SimLinkLostError(f"{self.address}: the link dropped")
        self._sent += len(payload)
        self.stats.bytes_sent += len(payload)
        self.stats.writes += 1
        await self._shape(len(payload))
        self._check()
        if not response:
            if model.loss and model.rng.random() < model.loss:
                self.stats.frames_lost += 1
                return
            self._enqueue(_WRITE_NR, characteristic.handle, payload)
            return
        op, _ = await self._request(_WRITE, characteristic.handle, payload)
        if op == _REFUSED:
            raise BleakGATTProtocolError(BleakGATTProtocolErrorCode.WRITE_NOT_PERMITTED)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        self._check()
        if descriptor.uuid != _CCCD:
            raise BleakGATTProtocolError(BleakGATTProtocolErrorCode.READ_NOT_PERMITTED)
        return bytearray(
            struct.pack("<H", 1 if descriptor.characteristic_handle in self._notify else 0)
        )

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        raise BleakError("the simulated GATT server has no writable descriptors")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        self._check()
        if not {"notify", "indicate"} & set(characteristic.properties):
            raise BleakError(f"{characteristic.uuid} does not notify")
        self._notify[characteristic.handle] = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._check()
        self._notify.pop(characteristic.handle, None)


#: The names the gateway's ``ble.backend`` setting looks for (``navign_gateway.daemon``).
client_backend = SimBleakClient
scanner_backend = SimBleakScanner

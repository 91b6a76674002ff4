"""A BlueZ-shaped D-Bus service for the advertising tests: ``org.bluez`` on a private dbus-daemon.

Why our own: python-dbusmock's ``bluez5`` template only records the paths registered (it never
reads the advertisement, validates it, calls Release() or notices a caller leaving), and would
bring dbus-python and libdbus into the lock. What the gateway relies on is what bluetoothd does
around LEAdvertisingManager1 (``src/advertising.c``):

* ``/`` answers ``org.freedesktop.DBus.ObjectManager.GetManagedObjects`` (dbus-fast serves it)
  and emits ``InterfacesAdded`` / ``InterfacesRemoved`` *from* ``/`` when the adapter comes and
  goes, as bluetoothd does;
* ``/org/bluez/<adapter>`` has ``org.bluez.Adapter1`` and ``org.bluez.LEAdvertisingManager1``:
  ``SupportedInstances`` is the number of instances still *free* and ``ActiveInstances`` the
  number registered (both announced with PropertiesChanged when they change);
* ``RegisterAdvertisement`` checks AlreadyExists (same caller and path), then takes an instance
  (NotPermitted when none is left), then calls ``Properties.GetAll("org.bluez.LEAdvertisement1")``
  on the caller's object and validates what it gets (types, Type, Discoverable with broadcast,
  UUIDs, and the advertising data against 31 bytes, counting 3 bytes of Flags);
* ``UnregisterAdvertisement`` of an unknown path is DoesNotExist; a caller that leaves the bus
  loses its advertisements; an adapter that goes away, or a bluetoothd that stops cleanly,
  calls ``Release()`` on every advertisement first.

Departures, on purpose: invalid properties are refused with the documented names
(``org.bluez.Error.InvalidArguments``, ``InvalidLength``) where bluetoothd 5.x answers
``org.bluez.Error.Failed`` for both; the advertiser treats any refusal alike. A failed GetAll is
answered at once with ``Failed`` (bluetoothd would wait for the object to appear). bluetoothd's
gdbus client asks ``GetManagedObjects`` at the advertisement's path before ``GetAll``; the mock
asks ``GetAll`` only (dbus-fast answers both on the advertiser's side).

Tests read :attr:`BluezMock.active` and :attr:`BluezMock.events` directly (the mock runs in the
test's event loop) and wait with :meth:`BluezMock.wait_for`.
"""

# No ``from __future__ import annotations``: dbus-fast reads D-Bus signatures from annotations.

import asyncio
import contextlib
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, NameFlag, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusByte, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import PropertyAccess, RequestNameReply
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

BLUEZ = "org.bluez"
ADAPTER = "org.bluez.Adapter1"
ADVERTISING_MANAGER = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT = "org.bluez.LEAdvertisement1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"

INVALID_ARGUMENTS = "org.bluez.Error.InvalidArguments"
INVALID_LENGTH = "org.bluez.Error.InvalidLength"
ALREADY_EXISTS = "org.bluez.Error.AlreadyExists"
NOT_PERMITTED = "org.bluez.Error.NotPermitted"
DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
FAILED = "org.bluez.Error.Failed"

MAX_ADV_LEN = 31
CALL_TIMEOUT = 5.0
_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"

StringList = Annotated[list[str], DBusSignature("as")]
VariantDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
InterfaceMap = Annotated[dict[str, dict[str, Variant]], DBusSignature("a{sa{sv}}")]


class RefusedError(Exception):
    """What RegisterAdvertisement answers instead of success."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


@dataclass
class Registration:
    """An advertisement BlueZ accepted: whose, where, and what it would put on air."""

    owner: str
    path: str
    instance: int
    properties: dict[str, Any]  # GetAll's answer, variants unpacked
    advertising_data: bytes  # the AD structures, as bluetoothd hands them to the kernel

    @property
    def service_data(self) -> dict[str, bytes]:
        value = self.properties.get("ServiceData", {})
        return {str(k): bytes(v) for k, v in value.items()}


def uuid_bytes(text: str) -> bytes:
    """A UUID as advertising data carries it: 16, 32 or 128 bits, little-endian, shortest form
    for Bluetooth base UUIDs (what BlueZ's ``bt_string_to_uuid`` and ``bt_ad`` do)."""
    if len(text) in (4, 8):
        value = int(text, 16)
    else:
        full = str(uuid.UUID(text))  # ValueError when it is no UUID
        if not full.endswith(_BASE_UUID_TAIL):
            return uuid.UUID(full).bytes[::-1]
        value = int(full[:8], 16)
    return struct.pack("<H", value) if value <= 0xFFFF else struct.pack("<I", value)


def _structure(ad_type: int, payload: bytes) -> bytes:
    return bytes((len(payload) + 1, ad_type)) + payload


def _expect(properties: dict[str, Variant], name: str, signature: str) -> Any:
    variant = properties.get(name)
    if variant is None:
        return None
    if variant.signature != signature:
        raise RefusedError(
            INVALID_ARGUMENTS, f"{name} must be {signature}, not {variant.signature}"
        )
    return variant.value


def _byte_arrays(name: str, entries: dict[Any, Variant]) -> dict[Any, bytes]:
    out: dict[Any, bytes] = {}
    for key, variant in entries.items():
        if not isinstance(variant, Variant) or variant.signature != "ay":
            raise RefusedError(INVALID_ARGUMENTS, f"{name}[{key!r}] must be a byte array")
        out[key] = bytes(variant.value)
    return out


def advertising_data(properties: dict[str, Variant]) -> tuple[bytes, dict[str, Any]]:
    """Validate an LEAdvertisement1's properties as bluetoothd parses them; the advertising data
    (Flags first) and the unpacked properties. Raises :class:`RefusedError`."""
    kind = _expect(properties, "Type", "s")
    if kind is not None and kind not in ("broadcast", "peripheral"):
        raise RefusedError(INVALID_ARGUMENTS, f"Type {kind!r} is neither broadcast nor peripheral")
    discoverable = _expect(properties, "Discoverable", "b")
    if discoverable and kind != "peripheral":
        raise RefusedError(INVALID_ARGUMENTS, "Broadcast cannot set flags")
    flags = 0x06 if discoverable else 0x04  # LE General Discoverable; BR/EDR not supported
    data = _structure(0x01, bytes((flags,)))
    unpacked: dict[str, Any] = {"Type": kind}
    try:
        uuids = _expect(properties, "ServiceUUIDs", "as") or []
        for size, ad_type in ((2, 0x03), (4, 0x05), (16, 0x07)):
            same = [u for u in (uuid_bytes(t) for t in uuids) if len(u) == size]
            if same:
                data += _structure(ad_type, b"".join(same))
        unpacked["ServiceUUIDs"] = list(uuids)
        makers = _byte_arrays(
            "ManufacturerData", _expect(properties, "ManufacturerData", "a{qv}") or {}
        )
        for company, payload in makers.items():
            data += _structure(0xFF, struct.pack("<H", company) + payload)
        unpacked["ManufacturerData"] = makers
        services = _byte_arrays("ServiceData", _expect(properties, "ServiceData", "a{sv}") or {})
        for key, payload in services.items():
            encoded = uuid_bytes(key)
            ad_type = {2: 0x16, 4: 0x20, 16: 0x21}[len(encoded)]
            data += _structure(ad_type, encoded + payload)
        unpacked["ServiceData"] = services
    except ValueError as exc:
        raise RefusedError(INVALID_ARGUMENTS, f"not a UUID: {exc}") from None
    raw = _byte_arrays("Data", _expect(properties, "Data", "a{yv}") or {})
    for ad_type, payload in raw.items():
        data += _structure(ad_type, payload)
    includes = _expect(properties, "Includes", "as") or []
    local_name = _expect(properties, "LocalName", "s")
    if local_name is not None and "local-name" in includes:
        raise RefusedError(INVALID_ARGUMENTS, "LocalName and Includes local-name together")
    unpacked.update(Data=raw, Includes=list(includes), LocalName=local_name)
    room = (
        MAX_ADV_LEN - (3 if "tx-power" in includes else 0) - (4 if "appearance" in includes else 0)
    )
    if len(data) > room:
        raise RefusedError(INVALID_LENGTH, f"{len(data)} bytes of advertising data, {room} fit")
    return data, unpacked


class _ObjectManager(ServiceInterface):
    """``/``: GetManagedObjects comes from dbus-fast; the two signals are emitted from here."""

    def __init__(self) -> None:
        super().__init__(OBJECT_MANAGER)

    @dbus_signal(name="InterfacesAdded")
    def interfaces_added(
        self, path: str, interfaces: dict[str, dict[str, Variant]]
    ) -> Annotated[tuple[str, dict[str, dict[str, Variant]]], DBusSignature("oa{sa{sv}}")]:
        return path, interfaces

    @dbus_signal(name="InterfacesRemoved")
    def interfaces_removed(
        self, path: str, interfaces: list[str]
    ) -> Annotated[tuple[str, list[str]], DBusSignature("oas")]:
        return path, interfaces


class _Adapter(ServiceInterface):
    def __init__(self, address: str, name: str) -> None:
        super().__init__(ADAPTER)
        self.address = address
        self.name_ = name

    @dbus_property(access=PropertyAccess.READ, name="Address")
    def address_(self) -> DBusStr:
        return self.address

    @dbus_property(access=PropertyAccess.READ, name="AddressType")
    def address_type(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ, name="Name")
    def name_property(self) -> DBusStr:
        return self.name_

    @dbus_property(access=PropertyAccess.READ, name="Alias")
    def alias(self) -> DBusStr:
        return self.name_

    @dbus_property(access=PropertyAccess.READ, name="Class")
    def class_(self) -> DBusUInt32:
        return 0

    @dbus_property(access=PropertyAccess.READ, name="Powered")
    def powered(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ, name="Discoverable")
    def discoverable(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ, name="Pairable")
    def pairable(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ, name="Discovering")
    def discovering(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ, name="UUIDs")
    def uuids(self) -> StringList:
        return []

    def snapshot(self) -> dict[str, Variant]:
        return {
            "Address": Variant("s", self.address),
            "AddressType": Variant("s", "public"),
            "Name": Variant("s", self.name_),
            "Alias": Variant("s", self.name_),
            "Class": Variant("u", 0),
            "Powered": Variant("b", True),
            "Discoverable": Variant("b", False),
            "Pairable": Variant("b", False),
            "Discovering": Variant("b", False),
            "UUIDs": Variant("as", []),
        }


class _AdvertisingManager(ServiceInterface):
    """The properties of LEAdvertisingManager1. Its two methods need the caller's unique name
    (BlueZ calls the caller back), which dbus-fast does not give a method: they are served by
    :meth:`BluezMock._on_message` before dbus-fast dispatches, and declared here for
    introspection."""

    def __init__(self, mock: "BluezMock") -> None:
        super().__init__(ADVERTISING_MANAGER)
        self._mock = mock

    @dbus_method(name="RegisterAdvertisement")
    def register_advertisement(
        self,
        advertisement: Annotated[str, DBusSignature("o")],
        options: VariantDict,
    ) -> None:
        raise DBusError(FAILED, "served by BluezMock._on_message")

    @dbus_method(name="UnregisterAdvertisement")
    def unregister_advertisement(self, advertisement: Annotated[str, DBusSignature("o")]) -> None:
        raise DBusError(FAILED, "served by BluezMock._on_message")

    @dbus_property(access=PropertyAccess.READ, name="ActiveInstances")
    def active_instances(self) -> DBusByte:
        return len(self._mock.active)

    @dbus_property(access=PropertyAccess.READ, name="SupportedInstances")
    def supported_instances(self) -> DBusByte:
        return self._mock.free_instances

    @dbus_property(access=PropertyAccess.READ, name="SupportedIncludes")
    def supported_includes(self) -> StringList:
        return ["tx-power", "appearance", "local-name"]

    @dbus_property(access=PropertyAccess.READ, name="SupportedFeatures")
    def supported_features(self) -> StringList:
        return []

    @dbus_property(access=PropertyAccess.READ, name="SupportedCapabilities")
    def supported_capabilities(self) -> VariantDict:
        return {"MaxAdvLen": Variant("y", MAX_ADV_LEN), "MaxScnRspLen": Variant("y", MAX_ADV_LEN)}

    def snapshot(self) -> dict[str, Variant]:
        return {
            "ActiveInstances": Variant("y", len(self._mock.active)),
            "SupportedInstances": Variant("y", self._mock.free_instances),
            "SupportedIncludes": Variant("as", ["tx-power", "appearance", "local-name"]),
            "SupportedFeatures": Variant("as", []),
        }


class BluezMock:
    """``org.bluez`` with one adapter (or none until :meth:`add_adapter`), ``max_instances``
    advertising instances, on the bus at ``bus_address``."""

    def __init__(
        self,
        bus_address: str,
        *,
        adapter: str | None = "hci0",
        max_instances: int = 5,
        address: str = "00:1A:7D:DA:71:13",
    ) -> None:
        self.bus_address = bus_address
        self.max_instances = max_instances
        self.address = address
        self.adapter: str | None = None
        self._initial_adapter = adapter
        #: (owner, path) → what BlueZ would advertise.
        self.active: dict[tuple[str, str], Registration] = {}
        #: ("register" | "unregister" | "release" | "disconnect", path), in order.
        self.events: list[tuple[str, str]] = []
        #: RegisterAdvertisement calls received, refused ones included.
        self.register_calls = 0
        self._pending: set[tuple[str, str]] = set()
        self._bus: MessageBus | None = None
        self._root = _ObjectManager()
        self._adapter: _Adapter | None = None
        self._manager = _AdvertisingManager(self)
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        bus = await MessageBus(self.bus_address, BusType.SESSION).connect()
        self._bus = bus
        bus.add_message_handler(self._on_message)
        rule = "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"
        await bus.call(
            Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule],
            )
        )  # fmt: skip
        bus.export("/", self._root)
        if self._initial_adapter is not None:
            self.add_adapter(self._initial_adapter)
        reply = await bus.request_name(BLUEZ, NameFlag.DO_NOT_QUEUE)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            raise RuntimeError(f"cannot own {BLUEZ}: {reply}")

    async def stop(self, *, release: bool = False) -> None:
        """Leave the bus: like bluetoothd stopping cleanly (``release``: Release() on every
        advertisement first) or crashing."""
        bus, self._bus = self._bus, None
        if bus is None:
            return
        if release:
            for registration in list(self.active.values()):
                await self._release(bus, registration)
        for task in list(self._tasks):
            task.cancel()
        self.active.clear()
        bus.disconnect()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CALL_TIMEOUT):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        self._touch()

    @property
    def unique_name(self) -> str | None:
        return self._bus.unique_name if self._bus is not None else None

    @property
    def free_instances(self) -> int:
        return max(0, self.max_instances - len(self.active) - len(self._pending))

    def add_adapter(self, name: str = "hci0") -> None:
        bus = self._require_bus()
        path = f"/org/bluez/{name}"
        self.adapter = name
        self._adapter = _Adapter(self.address, name)
        bus.export(path, self._adapter)
        bus.export(path, self._manager)
        self._root.interfaces_added(
            path, {ADAPTER: self._adapter.snapshot(), ADVERTISING_MANAGER: self._manager.snapshot()}
        )

    async def remove_adapter(self) -> None:
        """The adapter goes away: every advertisement is released, then the interfaces go."""
        bus = self._require_bus()
        if self.adapter is None:
            return
        for registration in list(self.active.values()):
            await self._release(bus, registration)
        path = f"/org/bluez/{self.adapter}"
        bus.unexport(path)
        self.adapter = None
        self._adapter = None
        self._root.interfaces_removed(path, [ADAPTER, ADVERTISING_MANAGER])
        self._touch()

    async def release(self, path: str) -> None:
        """Drop the advertisement at ``path`` and call its Release(), as BlueZ does when it
        removes one by itself (a Timeout, an adapter reset)."""
        bus = self._require_bus()
        for registration in list(self.active.values()):
            if registration.path == path:
                await self._release(bus, registration)
                return
        raise KeyError(path)

    async def wait_for(self, predicate: Callable[[], bool], limit: float = 5.0) -> None:
        """Until ``predicate()`` holds; TimeoutError after ``limit`` seconds."""
        async with asyncio.timeout(limit):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # -- the two methods ---------------------------------------------------------------------

    def _on_message(self, msg: Message) -> Message | bool:
        if msg.message_type is MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
                name, old, new = msg.body
                if name == old and not new:
                    self._client_gone(name)
            return False
        if (
            msg.message_type is not MessageType.METHOD_CALL
            or msg.interface != ADVERTISING_MANAGER
            or self.adapter is None
            or msg.path != f"/org/bluez/{self.adapter}"
        ):
            return False
        if msg.member == "UnregisterAdvertisement":
            return self._unregister(msg)
        if msg.member == "RegisterAdvertisement":
            self.register_calls += 1
            task = asyncio.create_task(self._register(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        return False

    async def _register(self, msg: Message) -> None:
        bus = self._require_bus()
        try:
            registration = await self._admit(bus, msg)
        except RefusedError as exc:
            bus.send(Message.new_error(msg, exc.name, exc.text))
            return
        self.active[(registration.owner, registration.path)] = registration
        self.events.append(("register", registration.path))
        bus.send(Message.new_method_return(msg))
        self._instances_changed()

    async def _admit(self, bus: MessageBus, msg: Message) -> Registration:
        if msg.signature != "oa{sv}" or not msg.sender:
            raise RefusedError(INVALID_ARGUMENTS, "expected (object advertisement, dict options)")
        key = (msg.sender, str(msg.body[0]))
        if key in self.active or key in self._pending:
            raise RefusedError(ALREADY_EXISTS, "Already Exists")
        if self.free_instances == 0:
            raise RefusedError(NOT_PERMITTED, "Maximum advertisements reached")
        used = {r.instance for r in self.active.values()}
        instance = next(i for i in range(1, self.max_instances + 1) if i not in used)
        self._pending.add(key)
        try:
            call = Message(
                destination=key[0], path=key[1], interface=PROPERTIES, member="GetAll",
                signature="s", body=[ADVERTISEMENT],
            )  # fmt: skip
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    reply = await bus.call(call)
            except (TimeoutError, OSError, EOFError) as exc:
                raise RefusedError(FAILED, f"Failed to register advertisement: {exc}") from None
            if reply.message_type is MessageType.ERROR:
                raise RefusedError(FAILED, f"Failed to register advertisement: {reply.error_name}")
            data, properties = advertising_data(reply.body[0])
        finally:
            self._pending.discard(key)
        return Registration(key[0], key[1], instance, properties, data)

    def _unregister(self, msg: Message) -> Message:
        if msg.signature != "o" or not msg.sender:
            return Message.new_error(msg, INVALID_ARGUMENTS, "Invalid arguments in method call")
        registration = self.active.pop((msg.sender, str(msg.body[0])), None)
        if registration is None:
            return Message.new_error(msg, DOES_NOT_EXIST, "Does Not Exist")
        self.events.append(("unregister", registration.path))
        self._instances_changed()
        return Message.new_method_return(msg)

    # -- helpers ------------------------------------------------------------------------------

    async def _release(self, bus: MessageBus, registration: Registration) -> None:
        self.active.pop((registration.owner, registration.path), None)
        self.events.append(("release", registration.path))
        call = Message(
            destination=registration.owner, path=registration.path, interface=ADVERTISEMENT,
            member="Release", flags=MessageFlag.NO_REPLY_EXPECTED,
        )  # fmt: skip
        await bus.send(call)
        self._instances_changed()

    def _client_gone(self, owner: str) -> None:
        gone = [key for key in self.active if key[0] == owner]
        for key in gone:
            self.events.append(("disconnect", key[1]))
            del self.active[key]
        if gone:
            self._instances_changed()

    def _instances_changed(self) -> None:
        if self._bus is not None and self.adapter is not None:
            self._manager.emit_properties_changed(
                {"ActiveInstances": len(self.active), "SupportedInstances": self.free_instances}
            )
        self._touch()

    def _touch(self) -> None:
        self._changed.set()

    def _require_bus(self) -> MessageBus:
        if self._bus is None:
            raise RuntimeError("the BlueZ mock is not running")
        return self._bus

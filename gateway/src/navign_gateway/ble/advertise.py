"""The gateway's BLE advertising of its latest releases (protocol §8.7), through BlueZ's
``org.bluez.LEAdvertisingManager1`` on the system D-Bus, with dbus-fast.

Why it exists: a beacon (or a technician's phone) in range should learn that the gateway holds a
newer release without connecting to anything. So the gateway broadcasts, per target chip and
kind, one non-connectable advertisement whose 128-bit service data is the 10-byte *release frame*
of §8.7. It is a hint only: a beacon always fetches and verifies a release itself (§6.5).

BlueZ is a peer that comes and goes (absent at boot, restarted by systemd, an adapter unplugged),
so :class:`ReleaseAdvertiser` is a small state machine that never raises for any of that: it
logs an outage once at WARNING (repeats at DEBUG), retries with capped backoff (at least every
``RETRY_MAX`` seconds), and registers again at once when BlueZ reappears (``NameOwnerChanged``),
when the adapter reappears (``ObjectManager.InterfacesAdded``), and ``REREGISTER_DELAY`` seconds
after BlueZ dropped an advertisement (``LEAdvertisement1.Release``). All state changes happen in
its one supervisor task; D-Bus signals only wake it.

Public: :class:`AdvertisedRelease`, :func:`advertised_releases`, :class:`ReleaseFrame`,
:func:`release_frame`, :func:`parse_release_frame`, :class:`ReleaseAdvertiser`, and the frame's
constants.
"""

# No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures of the
# exported methods and properties from their annotations, and a postponed ``-> None`` is a string
# it cannot use.

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from navign_gateway.backoff import Backoff, FailureLog
from navign_proto.versions import parse_version

if TYPE_CHECKING:
    from navign_gateway.firmware import CachedRelease

__all__ = [
    "ADVERTISING_DATA_SIZE",
    "CHIP_CODES",
    "FRAME_SIZE",
    "FRAME_VERSION",
    "KIND_CODES",
    "LEGACY_ADVERTISING_MAX",
    "NAVIGN_SERVICE_UUID",
    "AdvertisedRelease",
    "ReleaseAdvertiser",
    "ReleaseFrame",
    "advertised_releases",
    "parse_release_frame",
    "release_frame",
]

log = logging.getLogger(__name__)

# -- the release frame (§8.7) ----------------------------------------------------------------

NAVIGN_SERVICE_UUID: Final = "221c9a15-8a12-4b95-a639-f74aa402c53d"
FRAME_VERSION: Final = 0x02  # 0x01 is the beacon's status frame (§8.4)
FRAME_SIZE: Final = 10
CHIP_CODES: Final[dict[str, int]] = {"esp32": 1, "esp32c3": 2, "esp32s3": 3}
KIND_CODES: Final[dict[str, int]] = {"app": 1, "image": 2}
_CHIP_NAMES: Final = {code: name for name, code in CHIP_CODES.items()}
_KIND_NAMES: Final = {code: name for name, code in KIND_CODES.items()}

#: What the advertising PDU carries: a Flags structure (length, type 0x01, flags), then one
#: "Service Data - 128-bit UUID" structure (length, type 0x21, the UUID) and the frame.
FLAGS_AD_SIZE: Final = 3
SERVICE_DATA_128_HEADER: Final = 18
LEGACY_ADVERTISING_MAX: Final = 31
ADVERTISING_DATA_SIZE: Final = FLAGS_AD_SIZE + SERVICE_DATA_128_HEADER + FRAME_SIZE
assert ADVERTISING_DATA_SIZE <= LEGACY_ADVERTISING_MAX, "the frame must fit legacy advertising"

# -- timing (module-level so tests can patch them) ---------------------------------------------

RETRY_INITIAL = 1.0
#: The longest wait between two attempts while BlueZ or the adapter is missing.
RETRY_MAX = 30.0
#: After BlueZ released an advertisement, register it again this much later.
REREGISTER_DELAY = 2.0
#: Every D-Bus call (and connecting to the bus) is bounded by this.
CALL_TIMEOUT = 5.0
#: update() waits at most this long for the supervisor to try the new set.
UPDATE_WAIT = 10.0
#: stop() gives the unregistrations this long in all; BlueZ drops the rest when we disconnect.
STOP_TIMEOUT = 3.0

# -- D-Bus names -------------------------------------------------------------------------------

BLUEZ: Final = "org.bluez"
ADVERTISING_MANAGER: Final = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT: Final = "org.bluez.LEAdvertisement1"
_DBUS: Final = "org.freedesktop.DBus"
_DBUS_PATH: Final = "/org/freedesktop/DBus"
_PROPERTIES: Final = "org.freedesktop.DBus.Properties"
_OBJECT_MANAGER: Final = "org.freedesktop.DBus.ObjectManager"
_OBJECT_ROOT: Final = "/org/navign/gateway/advertisement"
_NOT_PERMITTED: Final = "org.bluez.Error.NotPermitted"
_DOES_NOT_EXIST: Final = "org.bluez.Error.DoesNotExist"
_NAME_HAS_NO_OWNER: Final = "org.freedesktop.DBus.Error.NameHasNoOwner"

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_ADAPTER_NAME: Final = re.compile(r"[A-Za-z0-9_]{1,32}")

ServiceData = Annotated[dict[str, Variant], DBusSignature("a{sv}")]


@dataclass(frozen=True, slots=True)
class AdvertisedRelease:
    """A verified release the gateway holds, as §8.7 advertises it. Invalid fields raise
    ValueError: ``target`` must have a chip code, ``version`` be SemVer, ``manifest_sha256`` be
    64 hex digits."""

    target: str
    kind: str
    version: str
    secure_version: int
    manifest_sha256: str

    def __post_init__(self) -> None:
        if self.target not in CHIP_CODES:
            raise ValueError(f"target {self.target!r} has no chip code in the release frame")
        if self.kind not in KIND_CODES:
            raise ValueError(f"kind {self.kind!r} is neither 'app' nor 'image'")
        parse_version(self.version)  # VersionError is a ValueError
        secure = self.secure_version
        if isinstance(secure, bool) or not isinstance(secure, int) or secure < 0:
            raise ValueError(f"secure_version must be an integer >= 0, not {secure!r}")
        if not isinstance(self.manifest_sha256, str) or not _SHA256_HEX.fullmatch(
            self.manifest_sha256
        ):
            raise ValueError("manifest_sha256 must be 64 hexadecimal digits")

    @property
    def key(self) -> tuple[str, str]:
        """(target, kind): one advertisement each."""
        return self.target, self.kind

    @classmethod
    def from_cached(cls, release: "CachedRelease") -> "AdvertisedRelease":
        """The advertised form of a release in the firmware cache (ValueError for a target
        without a chip code)."""
        return cls(
            target=release.target,
            kind=release.kind,
            version=release.version,
            secure_version=release.secure_version,
            manifest_sha256=release.manifest_sha256,
        )

    def __str__(self) -> str:
        return f"{self.target} {self.kind} {self.version}"


def advertised_releases(cached: Iterable["CachedRelease"]) -> list[AdvertisedRelease]:
    """The newest release per (target, kind) among ``cached`` (SemVer precedence, then the
    latest cached), skipping targets the frame cannot name: what :meth:`ReleaseAdvertiser.update`
    takes."""
    best: dict[tuple[str, str], CachedRelease] = {}
    for release in cached:
        if release.target not in CHIP_CODES or release.kind not in KIND_CODES:
            continue
        key = (release.target, release.kind)
        current = best.get(key)
        if current is None or (parse_version(release.version), release.cached_at) > (
            parse_version(current.version),
            current.cached_at,
        ):
            best[key] = release
    return [AdvertisedRelease.from_cached(best[key]) for key in sorted(best)]


@dataclass(frozen=True, slots=True)
class ReleaseFrame:
    """A decoded release frame. Codes the reader does not know are kept (``target``/``kind``
    are then None), so a newer gateway's frame is tolerated."""

    chip_code: int
    kind_code: int
    version: tuple[int, int, int]
    secure_version: int
    manifest_prefix: bytes

    def __post_init__(self) -> None:
        if not (0 <= self.chip_code <= 15 and 0 <= self.kind_code <= 15):
            raise ValueError("chip and kind codes are 4 bits each")
        if len(self.version) != 3 or not all(0 <= n <= 255 for n in self.version):
            raise ValueError("the version is three bytes")
        if not 0 <= self.secure_version <= 255:
            raise ValueError("secure_version is one byte")
        if len(self.manifest_prefix) != 4:
            raise ValueError("the manifest prefix is 4 bytes")

    @property
    def target(self) -> str | None:
        return _CHIP_NAMES.get(self.chip_code)

    @property
    def kind(self) -> str | None:
        return _KIND_NAMES.get(self.kind_code)

    def to_bytes(self) -> bytes:
        head = (FRAME_VERSION, self.chip_code << 4 | self.kind_code, *self.version)
        return bytes((*head, self.secure_version)) + self.manifest_prefix


def release_frame(release: AdvertisedRelease) -> bytes:
    """The 10-byte frame of §8.7 for ``release``: version core and secure_version clamped to
    255, the manifest SHA-256's first 4 bytes in the digest's own order."""
    core = parse_version(release.version)
    return ReleaseFrame(
        chip_code=CHIP_CODES[release.target],
        kind_code=KIND_CODES[release.kind],
        version=(min(core.major, 255), min(core.minor, 255), min(core.patch, 255)),
        secure_version=min(release.secure_version, 255),
        manifest_prefix=bytes.fromhex(release.manifest_sha256)[:4],
    ).to_bytes()


def parse_release_frame(data: bytes) -> ReleaseFrame:
    """The inverse of :func:`release_frame` (``parse_release_frame(b).to_bytes() == b``).
    ValueError for another length or frame version: a scanner ignores such frames."""
    if len(data) != FRAME_SIZE:
        raise ValueError(f"a release frame is {FRAME_SIZE} bytes, not {len(data)}")
    if data[0] != FRAME_VERSION:
        raise ValueError(f"frame version {data[0]:#04x} is not a release frame")
    return ReleaseFrame(
        chip_code=data[1] >> 4,
        kind_code=data[1] & 0x0F,
        version=(data[2], data[3], data[4]),
        secure_version=data[5],
        manifest_prefix=bytes(data[6:10]),
    )


def _newest_first(releases: Iterable[AdvertisedRelease]) -> list[AdvertisedRelease]:
    """By SemVer precedence, then secure_version, ties by (target, kind): deterministic."""
    ordered = sorted(releases, key=lambda r: r.key)
    return sorted(ordered, key=lambda r: (parse_version(r.version), r.secure_version), reverse=True)


async def _disconnected(bus: MessageBus) -> None:
    """Until ``bus`` is disconnected, for whatever reason."""
    with contextlib.suppress(Exception):
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


class _UnavailableError(Exception):
    """BlueZ, the adapter or the bus cannot take our advertisements now (retried)."""


class _CallError(Exception):
    """A D-Bus error reply."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.name = name


class _Advertisement(ServiceInterface):
    """One ``org.bluez.LEAdvertisement1`` object: what BlueZ reads, and releases."""

    def __init__(
        self, release: AdvertisedRelease, path: str, advertiser: "ReleaseAdvertiser"
    ) -> None:
        super().__init__(ADVERTISEMENT)
        self.release = release
        self.frame = release_frame(release)
        self.path = path
        self.released = False
        self._advertiser = advertiser

    @dbus_property(access=PropertyAccess.READ, name="Type")
    def type_(self) -> DBusStr:
        return "broadcast"  # non-connectable: nothing to connect to

    @dbus_property(access=PropertyAccess.READ, name="ServiceData")
    def service_data(self) -> ServiceData:
        return {NAVIGN_SERVICE_UUID: Variant("ay", self.frame)}

    @dbus_method(name="Release")
    def release_(self) -> None:
        """BlueZ dropped this advertisement (it is already unregistered)."""
        self._advertiser._released(self)


class ReleaseAdvertiser:
    """Keeps one BlueZ advertisement per (target, kind) of the releases last given to
    :meth:`update`, as many as the adapter has instances for, newest first."""

    def __init__(self, adapter: str = "hci0", bus_address: str | None = None) -> None:
        if not _ADAPTER_NAME.fullmatch(adapter):
            raise ValueError(f"adapter {adapter!r} is not an adapter name like 'hci0'")
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self._bus_address = bus_address  # None: the system bus
        self._wanted: dict[tuple[str, str], AdvertisedRelease] = {}
        self._registered: dict[tuple[str, str], _Advertisement] = {}
        self._left_out: list[AdvertisedRelease] = []
        self._bus: MessageBus | None = None
        self._bus_watch: asyncio.Task[None] | None = None
        self._bluez: str | None = None  # BlueZ's unique name when we last looked
        self._adapter_removed = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._rewake: asyncio.TimerHandle | None = None
        self._generation = 0
        self._applied = 0
        self._attempted = asyncio.Event()
        self._paths = 0
        self._backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        self._failures = FailureLog(log, f"BLE advertising on {adapter}")

    # -- public ------------------------------------------------------------------------------

    @property
    def registered(self) -> list[AdvertisedRelease]:
        """The releases BlueZ holds for us now, newest first."""
        return _newest_first(ad.release for ad in self._registered.values() if not ad.released)

    @property
    def left_out(self) -> list[AdvertisedRelease]:
        """The releases that found no advertising instance at the last attempt."""
        return list(self._left_out)

    async def start(self) -> None:
        """Start advertising in the background. Never raises for BlueZ's state."""
        if self._task is not None and not self._task.done():
            return
        self._backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        self._task = asyncio.create_task(self._run(), name=f"ble-advertise-{self.adapter}")

    async def update(self, releases: Sequence[AdvertisedRelease]) -> None:
        """Advertise exactly ``releases`` (at most one per target and kind; ValueError
        otherwise, and nothing changes). The same set again is a no-op. Once started, returns
        when the supervisor has tried the new set (at most UPDATE_WAIT seconds)."""
        wanted: dict[tuple[str, str], AdvertisedRelease] = {}
        for release in releases:
            if not isinstance(release, AdvertisedRelease):
                raise TypeError(f"expected an AdvertisedRelease, not {type(release).__name__}")
            if release.key in wanted:
                raise ValueError(f"two releases for {release.target} {release.kind}")
            wanted[release.key] = release
        if wanted == self._wanted:
            return
        self._wanted = wanted
        self._generation += 1
        generation = self._generation
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UPDATE_WAIT):
                while self._applied < generation and self._task and not self._task.done():
                    await self._attempted.wait()

    async def stop(self) -> None:
        """Unregister every advertisement, then close the bus connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._rewake is not None:
            self._rewake.cancel()
            self._rewake = None
        bus, bluez = self._bus, self._bluez
        if bus is not None and bus.connected and bluez is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    for key in list(self._registered):
                        with contextlib.suppress(_CallError, OSError, EOFError, TimeoutError):
                            await self._unregister(bus, bluez, key)
        await self._drop_bus()
        self._notify_attempted()

    # -- the supervisor ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            generation = self._generation
            self._wake.clear()
            delay: float | None
            try:
                complete = await self._attempt()
            except Exception as exc:  # nothing here may stop the gateway: logged once, retried
                self._failures.failed(exc)
                if not isinstance(exc, _UnavailableError | _CallError | OSError | TimeoutError):
                    log.debug("BLE advertising attempt failed", exc_info=True)
                delay = self._backoff.next_delay()
            else:
                self._failures.recovered()
                self._backoff.reset()
                delay = None if complete else RETRY_MAX
            self._applied = generation
            self._notify_attempted()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _notify_attempted(self) -> None:
        done, self._attempted = self._attempted, asyncio.Event()
        done.set()

    async def _attempt(self) -> bool:
        """Bring BlueZ in line with the wanted set. True when every wanted release is on air."""
        bus = await self._connected_bus()
        if self._adapter_removed:
            self._adapter_removed = False
            self._forget_all()
        for key, ad in list(self._registered.items()):
            if ad.released:
                self._forget(key)
        if not self._wanted and not self._registered:
            self._note_left_out([], 0)
            return True
        bluez = await self._bluez_owner(bus)
        if bluez != self._bluez:
            self._forget_all()  # a BlueZ that restarted holds nothing of ours
            self._bluez = bluez
        if bluez is None:
            raise _UnavailableError("BlueZ is not running (no org.bluez on the bus)")
        capacity = await self._free_instances(bus, bluez) + len(self._registered)
        ordered = _newest_first(self._wanted.values())
        chosen = {r.key: release_frame(r) for r in ordered[:capacity]}
        for key, ad in list(self._registered.items()):
            if chosen.get(key) != ad.frame:
                await self._unregister(bus, bluez, key)
        refused: dict[tuple[str, str], str] = {}
        for release in ordered[:capacity]:
            if release.key in self._registered:
                continue
            try:
                if not await self._register(bus, bluez, release):
                    break  # another client took the instances we counted on
            except _CallError as exc:
                refused[release.key] = f"{release}: {exc}"
        left_out = [r for r in ordered if r.key not in self._registered and r.key not in refused]
        self._note_left_out(left_out, capacity)
        if refused:
            raise _UnavailableError("BlueZ refused " + "; ".join(refused.values()))
        return not left_out

    # -- D-Bus -----------------------------------------------------------------------------------

    async def _connected_bus(self) -> MessageBus:
        if self._bus is not None and self._bus.connected:
            return self._bus
        await self._drop_bus()
        bus = MessageBus(self._bus_address, BusType.SYSTEM, auth_timeout=CALL_TIMEOUT)
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await bus.connect()
            bus.add_message_handler(self._on_message)
            for rule in self._match_rules():
                await self._call(bus, _DBUS, _DBUS_PATH, _DBUS, "AddMatch", "s", [rule])
        except BaseException:
            bus.disconnect()
            raise
        self._bus = bus
        self._bus_watch = asyncio.create_task(self._watch(bus))
        return bus

    def _match_rules(self) -> list[str]:
        return [
            f"type='signal',sender='{_DBUS}',path='{_DBUS_PATH}',interface='{_DBUS}',"
            f"member='NameOwnerChanged',arg0='{BLUEZ}'",
            f"type='signal',sender='{BLUEZ}',path='/',interface='{_OBJECT_MANAGER}'",
            f"type='signal',sender='{BLUEZ}',path='{self.adapter_path}',"
            f"interface='{_PROPERTIES}',member='PropertiesChanged',arg0='{ADVERTISING_MANAGER}'",
        ]

    async def _watch(self, bus: MessageBus) -> None:
        await _disconnected(bus)
        if self._bus is bus:
            self._wake.set()

    async def _drop_bus(self) -> None:
        """Forget the connection: our objects go with it, and BlueZ drops a vanished client's
        advertisements by itself."""
        self._forget_all()
        self._bluez = None
        bus, self._bus = self._bus, None
        watch, self._bus_watch = self._bus_watch, None
        if bus is not None:
            bus.disconnect()
        if watch is not None:
            # asyncio.wait, not await: cancelling us must not cancel dbus-fast's shared future.
            await asyncio.wait([watch], timeout=CALL_TIMEOUT)

    def _on_message(self, msg: Message) -> bool:
        """Signals only wake the supervisor (or mark what it must forget); never handled."""
        if msg.message_type is not MessageType.SIGNAL:
            return False
        body = msg.body
        if msg.member == "NameOwnerChanged" and msg.interface == _DBUS:
            if body and body[0] == BLUEZ:
                self._wake.set()
        elif msg.interface == _OBJECT_MANAGER and body and body[0] == self.adapter_path:
            if msg.member == "InterfacesAdded" and ADVERTISING_MANAGER in body[1]:
                self._wake.set()
            elif msg.member == "InterfacesRemoved" and ADVERTISING_MANAGER in body[1]:
                self._adapter_removed = True
                self._wake.set()
        elif msg.member == "PropertiesChanged" and msg.path == self.adapter_path and self._left_out:
            self._wake.set()  # an instance may have come free
        return False

    def _released(self, ad: _Advertisement) -> None:
        if ad.released or self._registered.get(ad.release.key) is not ad:
            return
        ad.released = True
        log.info("BlueZ released the advertisement of %s; registering it again", ad.release)
        if self._rewake is not None:
            self._rewake.cancel()
        self._rewake = asyncio.get_running_loop().call_later(REREGISTER_DELAY, self._wake.set)

    async def _call(
        self,
        bus: MessageBus,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> Message:
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body if body is not None else [],
            flags=MessageFlag.NO_AUTOSTART,  # never start bluetoothd through us
        )
        async with asyncio.timeout(CALL_TIMEOUT):
            reply = await bus.call(msg)
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise _CallError(reply.error_name or "unknown error", text)
        return reply

    async def _bluez_owner(self, bus: MessageBus) -> str | None:
        try:
            reply = await self._call(bus, _DBUS, _DBUS_PATH, _DBUS, "GetNameOwner", "s", [BLUEZ])
        except _CallError as exc:
            if exc.name == _NAME_HAS_NO_OWNER:
                return None
            raise
        return str(reply.body[0])

    async def _free_instances(self, bus: MessageBus, bluez: str) -> int:
        """SupportedInstances: as in BlueZ, the instances still *free* (ours not included)."""
        try:
            reply = await self._call(
                bus, bluez, self.adapter_path, _PROPERTIES, "Get", "ss",
                [ADVERTISING_MANAGER, "SupportedInstances"],
            )  # fmt: skip
        except _CallError as exc:
            self._forget_all()  # registrations do not outlive their adapter
            raise _UnavailableError(
                f"adapter {self.adapter} not found, or it cannot advertise ({exc})"
            ) from None
        value = reply.body[0]
        return int(value.value if isinstance(value, Variant) else value)

    async def _register(self, bus: MessageBus, bluez: str, release: AdvertisedRelease) -> bool:
        """Register one advertisement; False when BlueZ has no instance left."""
        self._paths += 1
        path = f"{_OBJECT_ROOT}/{release.target}_{release.kind}_{self._paths}"
        ad = _Advertisement(release, path, self)
        bus.export(path, ad)
        args: list[Any] = [path, {}]
        try:
            await self._call(
                bus, bluez, self.adapter_path, ADVERTISING_MANAGER, "RegisterAdvertisement",
                "oa{sv}", args,
            )  # fmt: skip
        except _CallError as exc:
            bus.unexport(path, ad)
            if exc.name == _NOT_PERMITTED:
                return False
            raise
        except BaseException:
            # Timed out or cancelled: BlueZ may still complete it; take it back, best effort.
            with contextlib.suppress(Exception):
                msg = Message(
                    destination=bluez, path=self.adapter_path, interface=ADVERTISING_MANAGER,
                    member="UnregisterAdvertisement", signature="o", body=[path],
                    flags=MessageFlag.NO_REPLY_EXPECTED,
                )  # fmt: skip
                await bus.send(msg)
            bus.unexport(path, ad)
            raise
        self._registered[release.key] = ad
        log.info("BLE advertising on %s: %s", self.adapter, release)
        return True

    async def _unregister(self, bus: MessageBus, bluez: str, key: tuple[str, str]) -> None:
        ad = self._registered[key]
        try:
            await self._call(
                bus, bluez, self.adapter_path, ADVERTISING_MANAGER, "UnregisterAdvertisement",
                "o", [ad.path],
            )  # fmt: skip
        except _CallError as exc:
            if exc.name != _DOES_NOT_EXIST:  # already gone is what we wanted
                raise
        self._forget(key)
        log.info("BLE advertising on %s: stopped %s", self.adapter, ad.release)

    def _forget(self, key: tuple[str, str]) -> None:
        ad = self._registered.pop(key, None)
        if ad is not None and self._bus is not None:
            self._bus.unexport(ad.path, ad)

    def _forget_all(self) -> None:
        for key in list(self._registered):
            self._forget(key)

    def _note_left_out(self, left_out: list[AdvertisedRelease], capacity: int) -> None:
        if left_out == self._left_out:
            return
        self._left_out = list(left_out)
        if left_out:
            log.warning(
                "BLE advertising on %s: %d advertising instance(s) for %d releases; "
                "not advertised: %s",
                self.adapter, capacity, len(self._wanted), ", ".join(map(str, left_out)),
            )  # fmt: skip
        else:
            log.info("BLE advertising on %s: every release is advertised again", self.adapter)

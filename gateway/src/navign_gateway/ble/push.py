"""Pushing a release to a beacon over BLE GATT (protocol §8.5), through bleak's public API.

For beacons without Wi-Fi, the gateway is the central: it connects, OFFERs the release, sends the
DSSE envelope in MANIFEST parts when asked, streams the artifact in DATA frames written without
response, a window at a time, each window answered by one ACK (or a NACK saying where to restart),
then COMMITs. The beacon verifies everything itself (§6.5) before it writes a byte; the gateway only
carries. After DONE the beacon restarts; the pusher reconnects and sends STATUS, which is the
beacon's health check-in (§8.6), and reads the info characteristic until the result is final:
``committed`` or ``rolled_back``.

A dropped link is not a failed update: the pusher reconnects (with backoff, a bounded number of
times) and OFFERs again; the beacon answers ACCEPT with the offset its flash already holds (it
keeps a verified manifest for the boot, and after a power cut resumes from its last durable
point), so at most one window is sent twice.

At most ``max_connections`` BLE connections are open at once (BlueZ and the Pi's controller
handle few): :class:`BleCentral` holds that limit for pushes and inventory reads alike.

Public: :class:`BleCentral`, :class:`BlePusher`, :class:`PushFailedError`, the UUIDs, opcodes and
:data:`REJECT_REASONS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from navign_gateway.firmware import CachedRelease
from navign_gateway.rollout import EntryState, PushResult

log = logging.getLogger(__name__)

CONTROL: Final = "221c9a16-8a12-4b95-a639-f74aa402c53d"
DATA: Final = "221c9a17-8a12-4b95-a639-f74aa402c53d"
INFO: Final = "221c9a18-8a12-4b95-a639-f74aa402c53d"

OFFER, MANIFEST, COMMIT, ABORT, STATUS = 0x01, 0x02, 0x03, 0x04, 0x05
SEND_MANIFEST, ACCEPT, REJECT, ACK, NACK, DONE, ABORTED, STATUS_REPLY = range(0x81, 0x89)

REJECT_REASONS: Final = {
    1: "same_version",
    2: "downgrade",
    3: "invalid_signature",
    4: "wrong_target",
    5: "busy",
    6: "low_memory",
    7: "invalid_format",
    8: "secure_version",
    9: "min_previous_version",
    10: "expired",
    11: "no_keys",
    12: "too_large",
    13: "artifact_mismatch",
    14: "manifest_mismatch",
    15: "protocol",
}
#: A DATA frame's header (u16 seq, u32 offset, u16 length) and CRC-32 trailer.
FRAME_OVERHEAD: Final = 12
#: ATT write header: a write without response carries at most MTU - 3 bytes.
ATT_HEADER: Final = 3


class PushFailedError(Exception):
    """The push could not go on (the link, or the beacon's answers); ``reason`` is a code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class RejectedError(PushFailedError):
    """The beacon answered REJECT."""


@dataclass(frozen=True, slots=True)
class PushLimits:
    """Timing of one push."""

    #: Seconds to wait for one notification (an ACK for a window, ACCEPT after the manifest).
    reply: float = 20.0
    connect: float = 20.0
    #: Reconnections after a dropped link before the attempt fails.
    reconnects: int = 5
    #: How long a restarting beacon may take to be connectable again and final.
    after_reboot: float = 300.0


class BleCentral:
    """bleak clients and scanners with one connection limit; ``backend`` classes for tests."""

    def __init__(
        self,
        *,
        max_connections: int = 3,
        client_backend: type[BaseBleakClient] | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
        adapter: str = "hci0",
    ) -> None:
        self.slots = asyncio.Semaphore(max_connections)
        self.max_connections = max_connections
        self._client_backend = client_backend
        self._scanner_backend = scanner_backend
        self._adapter = adapter

    def scanner(self, callback: Callable[..., None]) -> BleakScanner:
        if self._scanner_backend is not None:
            return BleakScanner(callback, backend=self._scanner_backend)
        return BleakScanner(callback, adapter=self._adapter)

    def client(
        self, address: str, disconnected: Callable[[BleakClient], None], timeout: float
    ) -> BleakClient:
        if self._client_backend is not None:
            return BleakClient(address, disconnected, timeout=timeout, backend=self._client_backend)
        return BleakClient(address, disconnected, timeout=timeout, adapter=self._adapter)

    @contextlib.asynccontextmanager
    async def connected(self, address: str, seconds: float) -> AsyncIterator[Link]:
        """A connection within the limit, its notifications subscribed; closed on exit."""
        async with self.slots:
            link = Link()
            client = self.client(address, link.dropped, seconds)
            try:
                await asyncio.wait_for(client.connect(), seconds)
            except (BleakError, TimeoutError, OSError) as exc:
                raise PushFailedError("connect_failed", str(exc) or type(exc).__name__) from None
            link.client = client
            try:
                await client.start_notify(CONTROL, link.notified)
                yield link
            except (BleakError, OSError, EOFError) as exc:
                raise PushFailedError("link_lost", str(exc) or type(exc).__name__) from None
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), 5.0)


class Link:
    """One connection's notifications, in order, and whether it dropped."""

    def __init__(self) -> None:
        self.client: BleakClient | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        self.lost = False

    def notified(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(bytes(data))

    def dropped(self, _client: BleakClient) -> None:
        self.lost = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    @property
    def mtu(self) -> int:
        return self.client.mtu_size if self.client is not None else 23

    async def write(self, uuid: str, data: bytes, *, response: bool = True) -> None:
        if self.lost or self.client is None:
            raise PushFailedError("link_lost")
        try:
            await self.client.write_gatt_char(uuid, data, response=response)
        except (BleakError, OSError, EOFError) as exc:
            raise PushFailedError("link_lost", str(exc) or type(exc).__name__) from None

    async def read(self, uuid: str) -> bytes:
        if self.lost or self.client is None:
            raise PushFailedError("link_lost")
        try:
            return bytes(await self.client.read_gatt_char(uuid))
        except (BleakError, OSError, EOFError) as exc:
            raise PushFailedError("link_lost", str(exc) or type(exc).__name__) from None

    async def expect(self, seconds: float, *ops: int) -> bytes:
        """The next notification, which must be one of ``ops`` (REJECT raises)."""
        try:
            message = await asyncio.wait_for(self._queue.get(), seconds)
        except TimeoutError:
            raise PushFailedError("no_reply", f"nothing within {seconds:.0f} s") from None
        if message is None:
            raise PushFailedError("link_lost")
        if not message:
            raise PushFailedError("protocol", "an empty notification")
        if message[0] == REJECT and len(message) >= 2:
            code = message[1]
            reason = REJECT_REASONS.get(code, "rejected")
            text = message[2:].decode("ascii", "replace")
            raise RejectedError(reason, text)
        if message[0] not in ops:
            raise PushFailedError("protocol", f"unexpected message {message[0]:#04x}")
        return message


def frame(seq: int, offset: int, payload: bytes) -> bytes:
    header = struct.pack("<HIH", seq & 0xFFFF, offset, len(payload))
    return header + payload + struct.pack("<I", zlib.crc32(payload))


class BlePusher:
    """The rollout engine's BLE delivery (:class:`navign_gateway.rollout.BleDelivery`)."""

    def __init__(self, central: BleCentral, limits: PushLimits | None = None) -> None:
        self._central = central
        self.limits = limits or PushLimits()

    async def push(
        self,
        address: str,
        release: CachedRelease,
        progress: Callable[[EntryState, int], None],
    ) -> PushResult:
        try:
            envelope = await asyncio.to_thread(release.envelope_path.read_bytes)
        except OSError as exc:
            return PushResult("failed", f"release unreadable: {exc.strerror or exc}"[:100])
        manifest = bytes.fromhex(release.manifest_sha256)
        try:
            await self._transfer(address, release, envelope, manifest, progress)
            progress(EntryState.REBOOTING, release.size)
            return await self._check_in(address, release)
        except RejectedError as exc:
            if exc.reason == "busy":
                return PushResult("failed", "busy")
            return PushResult("refused", exc.reason)
        except PushFailedError as exc:
            return PushResult("failed", exc.reason)

    async def _transfer(
        self,
        address: str,
        release: CachedRelease,
        envelope: bytes,
        manifest: bytes,
        progress: Callable[[EntryState, int], None],
    ) -> None:
        drops = 0
        while True:
            try:
                async with self._central.connected(address, self.limits.connect) as link:
                    progress(EntryState.OFFERED, 0)
                    offset, total, chunk, window = await self._offer(link, envelope, manifest)
                    if total != release.size:
                        raise PushFailedError(
                            "protocol", f"the beacon expects {total} bytes, not {release.size}"
                        )
                    progress(EntryState.TRANSFERRING, offset)
                    await self._stream(
                        link, release.artifact_path, offset, total, chunk, window, progress
                    )
                    progress(EntryState.VERIFYING, total)
                    await link.write(CONTROL, bytes((COMMIT,)))
                    await link.expect(self.limits.reply * 3, DONE)
                    progress(EntryState.INSTALLING, total)
                    return
            except PushFailedError as exc:
                # A dropped link, or a beacon out of heap (it restarts with a clean one, §8.5):
                # reconnect and OFFER again, the beacon resumes from what its flash holds.
                if exc.reason not in ("link_lost", "no_reply", "connect_failed", "low_memory"):
                    raise
                drops += 1
                if drops > self.limits.reconnects:
                    raise
                log.info("BLE push to %s: %s; reconnecting (%d)", address, exc, drops)
                await asyncio.sleep(min(30.0, 0.5 * 2**drops))

    async def _offer(
        self, link: Link, envelope: bytes, manifest: bytes
    ) -> tuple[int, int, int, int]:
        await link.write(CONTROL, struct.pack("<BI", OFFER, len(envelope)) + manifest)
        message = await link.expect(self.limits.reply, SEND_MANIFEST, ACCEPT)
        if message[0] == SEND_MANIFEST:
            part = struct.unpack_from("<H", message, 1)[0]
            part = max(1, min(part, link.mtu - ATT_HEADER - 5))
            for start in range(0, len(envelope), part):
                body = struct.pack("<BI", MANIFEST, start) + envelope[start : start + part]
                await link.write(CONTROL, body)
            # The beacon verifies the signature now: pure MicroPython, allow it time.
            message = await link.expect(self.limits.reply * 3, ACCEPT)
        if len(message) < 12:
            raise PushFailedError("protocol", "a short ACCEPT")
        offset, total, chunk, window = struct.unpack_from("<IIHB", message, 1)
        return offset, total, chunk, max(1, window)

    async def _stream(
        self,
        link: Link,
        artifact: Path,
        offset: int,
        total: int,
        chunk: int,
        window: int,
        progress: Callable[[EntryState, int], None],
    ) -> None:
        chunk = max(1, min(chunk, link.mtu - ATT_HEADER - FRAME_OVERHEAD))
        seq = 0
        with artifact.open("rb") as source:
            while offset < total:
                position = offset
                for _ in range(window):
                    if position >= total:
                        break
                    source.seek(position)
                    piece = source.read(min(chunk, total - position))
                    if not piece:
                        raise PushFailedError("artifact_unreadable", "the cached file is short")
                    await link.write(DATA, frame(seq, position, piece), response=False)
                    seq += 1
                    position += len(piece)
                reply = await link.expect(self.limits.reply, ACK, NACK)
                (next_offset,) = struct.unpack_from("<I", reply, 1)
                if next_offset > total:
                    raise PushFailedError("protocol", f"ACK past the end ({next_offset})")
                offset = next_offset
                progress(EntryState.TRANSFERRING, offset)

    async def _check_in(self, address: str, release: CachedRelease) -> PushResult:
        """After DONE: reconnect to the restarted beacon, STATUS (its check-in), and read its
        info until the update is committed or rolled back."""
        deadline = time.monotonic() + self.limits.after_reboot
        last = "no_confirmation"
        await asyncio.sleep(1.0)  # the beacon restarts
        while time.monotonic() < deadline:
            try:
                async with self._central.connected(address, self.limits.connect) as link:
                    while time.monotonic() < deadline:
                        await link.write(CONTROL, bytes((STATUS,)))
                        await link.expect(self.limits.reply, STATUS_REPLY)
                        outcome = self._outcome(await link.read(INFO), release)
                        if outcome is not None:
                            return outcome
                        await asyncio.sleep(1.0)
            except PushFailedError as exc:
                last = exc.reason
                await asyncio.sleep(2.0)
        return PushResult("failed", "no_confirmation" if last == "connect_failed" else last)

    @staticmethod
    def _outcome(info: bytes, release: CachedRelease) -> PushResult | None:
        try:
            report: Any = json.loads(info)
        except ValueError:
            return None
        if not isinstance(report, dict):
            return None
        result = report.get("result")
        if not isinstance(result, dict) or result.get("manifest_sha256") != release.manifest_sha256:
            running = report.get("app_version" if release.kind == "app" else "firmware_version")
            if running == release.version and report.get("trial") is None:
                return PushResult("committed")
            return None
        outcome = result.get("outcome")
        if outcome == "committed":
            return PushResult("committed")
        if outcome in ("rolled_back", "refused"):
            return PushResult(str(outcome), str(result.get("reason") or outcome))
        return None

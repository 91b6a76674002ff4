"""The central's side of a simulated beacon's BLE link (host/bluetooth.py), and a reference pusher
of the Navign BLE OTA protocol (docs/protocol.md §8.5).

:class:`GattLink` connects to one board's GATT server over loopback, as a BLE central connects
over the air: it negotiates the MTU, discovers services, writes with and without response, reads
and receives notifications. :func:`push` drives OFFER → MANIFEST → DATA windows with ACK/NACK →
COMMIT through it; the gateway's rollout engine has its own implementation over bleak (the rollout
issue), and this one is what the firmware's own tests and benchmarks use.

Public: :class:`GattLink`, :class:`LinkClosedError`, :class:`RejectedError`, :func:`push`,
:data:`CONTROL`, :data:`DATA`, :data:`INFO`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import socket
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Final

SERVICE: Final = "221c9a15-8a12-4b95-a639-f74aa402c53d"
CONTROL: Final = "221c9a16-8a12-4b95-a639-f74aa402c53d"
DATA: Final = "221c9a17-8a12-4b95-a639-f74aa402c53d"
INFO: Final = "221c9a18-8a12-4b95-a639-f74aa402c53d"
DIS_MODEL: Final = "00002a24-0000-1000-8000-00805f9b34fb"
DIS_FIRMWARE: Final = "00002a26-0000-1000-8000-00805f9b34fb"
DIS_SOFTWARE: Final = "00002a28-0000-1000-8000-00805f9b34fb"

OFFER, MANIFEST, COMMIT, ABORT, STATUS = 0x01, 0x02, 0x03, 0x04, 0x05
SEND_MANIFEST, ACCEPT, REJECT, ACK, NACK, DONE, ABORTED, STATUS_REPLY = (
    0x81,
    0x82,
    0x83,
    0x84,
    0x85,
    0x86,
    0x87,
    0x88,
)


class LinkClosedError(ConnectionError):
    """The link went down (the board reset, or the connection dropped)."""


class RejectedError(RuntimeError):
    """The beacon refused (REJECT): ``code`` and the reason text it sent."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"rejected ({code}): {text}")
        self.code = code
        self.reason = text.split(":", 1)[0]


class GattLink:
    """One connection to a simulated beacon's GATT server on ``127.0.0.1:port``."""

    def __init__(self, port: int, *, mtu: int = 247, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(None)
        self.timeout = timeout
        self._replies: queue.Queue[tuple[int, int, bytes]] = queue.Queue()
        self.notifications: queue.Queue[bytes] = queue.Queue()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._send(0x01, 0, struct.pack("<H", mtu))
        op, _, data = self._reply()
        if op != 0x81:
            raise LinkClosedError(f"unexpected connect reply {op:#x}")
        desc = json.loads(data)
        self.mtu: int = desc["mtu"]
        self.handles: dict[str, int] = {}
        for service in desc["services"]:
            for char in service["chars"]:
                self.handles[char["uuid"]] = char["handle"]

    def _send(self, op: int, handle: int, data: bytes = b"") -> None:
        if self.closed.is_set():
            raise LinkClosedError("the link is down")
        try:
            self.sock.sendall(struct.pack("<BHH", op, handle, len(data)) + data)
        except OSError as exc:
            self.closed.set()
            raise LinkClosedError(str(exc)) from None

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 5:
                    op, handle, length = struct.unpack_from("<BHH", buf)
                    if len(buf) < 5 + length:
                        break
                    data, buf = buf[5 : 5 + length], buf[5 + length :]
                    if op == 0x10 and handle == self.handles.get(CONTROL, -1):
                        self.notifications.put(data)
                    elif op == 0x11:
                        return
                    else:
                        self._replies.put((op, handle, data))
        except OSError:
            pass
        finally:
            self.closed.set()
            self._replies.put((0, 0, b""))
            self.notifications.put(b"")

    def _reply(self) -> tuple[int, int, bytes]:
        try:
            op, handle, data = self._replies.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError("no reply from the board") from None
        if op == 0:
            raise LinkClosedError("the link went down")
        return op, handle, data

    def write(self, uuid: str, data: bytes, *, response: bool = True) -> None:
        handle = self.handles[uuid]
        self._send(0x02 if response else 0x03, handle, data)
        if response:
            op, _, _ = self._reply()
            if op != 0x82:
                raise RuntimeError(f"write refused ({op:#x})")

    def read(self, uuid: str) -> bytes:
        self._send(0x04, self.handles[uuid])
        op, _, data = self._reply()
        if op != 0x84:
            raise RuntimeError(f"read refused ({op:#x})")
        return data

    def notification(self, timeout: float | None = None) -> bytes:
        try:
            data = self.notifications.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise TimeoutError("no notification from the board") from None
        if not data and self.closed.is_set():
            raise LinkClosedError("the link went down")
        return data

    def info(self) -> dict[str, Any]:
        return dict(json.loads(self.read(INFO)))

    def close(self) -> None:
        if not self.closed.is_set():
            with contextlib.suppress(LinkClosedError):
                self._send(0x05, 0)
        self.sock.close()
        self.closed.set()

    def __enter__(self) -> GattLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PushStats:
    """What a push did: where it resumed, frames sent and re-sent, NACKs."""

    resumed_at: int = 0
    frames: int = 0
    resent: int = 0
    nacks: int = 0


def _expect(link: GattLink, *ops: int) -> bytes:
    msg = link.notification()
    if msg[0] == REJECT:
        raise RejectedError(msg[1], msg[2:].decode(errors="replace"))
    if msg[0] not in ops:
        raise RuntimeError(f"unexpected notification {msg[0]:#x}, wanted {ops}")
    return msg


def offer(link: GattLink, envelope: bytes) -> tuple[int, int, int, int]:
    """OFFER (and the MANIFEST parts if asked); returns ACCEPT's (resume offset, total, chunk,
    window). Raises :class:`RejectedError`."""
    sha = hashlib.sha256(_payload(envelope)).digest()
    link.write(CONTROL, struct.pack("<BI", OFFER, len(envelope)) + sha)
    msg = _expect(link, SEND_MANIFEST, ACCEPT)
    if msg[0] == SEND_MANIFEST:
        part = struct.unpack_from("<H", msg, 1)[0]
        for i in range(0, len(envelope), part):
            link.write(CONTROL, struct.pack("<BI", MANIFEST, i) + envelope[i : i + part])
        msg = _expect(link, ACCEPT)
    offset, total, chunk, window = struct.unpack_from("<IIHB", msg, 1)
    return offset, total, chunk, window


def _payload(envelope: bytes) -> bytes:
    import base64

    return base64.b64decode(json.loads(envelope)["payload"])


def frame(seq: int, offset: int, payload: bytes, *, corrupt: bool = False) -> bytes:
    crc = zlib.crc32(payload) ^ (1 if corrupt else 0)
    return (
        struct.pack("<HIH", seq & 0xFFFF, offset, len(payload)) + payload + struct.pack("<I", crc)
    )


def push(
    link: GattLink,
    envelope: bytes,
    artifact: bytes,
    *,
    stop_after: int | None = None,
    corrupt_frames: frozenset[int] = frozenset(),
) -> PushStats:
    """Offer and stream a release, then COMMIT (unless ``stop_after`` bytes were sent: then it
    returns early, as a gateway whose link dropped). ``corrupt_frames`` are frame numbers sent
    once with a bad CRC."""
    stats = PushStats()
    offset, total, chunk, window = offer(link, envelope)
    if total != len(artifact):
        raise RuntimeError(f"the beacon expects {total} bytes, the artifact has {len(artifact)}")
    stats.resumed_at = offset
    seq = 0
    sent_at = offset
    corrupted: set[int] = set()
    while offset < total:
        # Send one window, then wait for its ACK (or a NACK saying where to restart).
        pos = offset
        for _ in range(window):
            if pos >= total:
                break
            piece = artifact[pos : pos + chunk]
            bad = seq in corrupt_frames and seq not in corrupted
            if bad:
                corrupted.add(seq)
            link.write(DATA, frame(seq, pos, piece, corrupt=bad), response=False)
            stats.frames += 1
            if pos < sent_at:
                stats.resent += 1
            seq += 1
            pos += len(piece)
            sent_at = max(sent_at, pos)
            if stop_after is not None and pos - stats.resumed_at >= stop_after:
                return stats
        msg = _expect(link, ACK, NACK)
        if msg[0] == NACK:
            stats.nacks += 1
            # Drain the ACK that may follow for frames already in flight.
        offset = struct.unpack_from("<I", msg, 1)[0]
    link.write(CONTROL, bytes((COMMIT,)))
    _expect(link, DONE)
    return stats


def status(link: GattLink) -> int:
    """STATUS: the gateway's check-in; returns 1 when the beacon runs an update on trial."""
    link.write(CONTROL, bytes((STATUS,)))
    return _expect(link, STATUS_REPLY)[1]

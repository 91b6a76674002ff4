# A release pushed over BLE (docs/protocol.md §8.5): the gateway's OFFER, the envelope in
# MANIFEST parts, verified, then DATA frames in windows with ACK/NACK, and COMMIT. Loaded by
# navign.gatt for an OFFER and unloaded when the transfer ends.
import binascii
import gc
import struct

from micropython import const

from navign import ota
from navign.errors import Refused

OFFER = const(0x01)
MANIFEST = const(0x02)
COMMIT = const(0x03)
ABORT = const(0x04)
SEND_MANIFEST = const(0x81)
ACCEPT = const(0x82)
ACK = const(0x84)
NACK = const(0x85)
DONE = const(0x86)
ABORTED = const(0x87)

WINDOW = const(8)  # DATA frames between ACKs
FRAME_HEAD = const(8)  # seq u16, offset u32, length u16
FRAME_TAIL = const(4)  # CRC-32 of the payload
# Received DATA bytes not yet handled: what the data characteristic accumulated (at most its
# 4 KiB buffer) plus the part of a frame left from the last read. Allocated once, at the OFFER
# (before verification fragments the heap): growing and slicing a buffer for every read needed
# large contiguous blocks, and a lossy link (a NACK leaves two windows queued) ran out of them.
RX_CAPACITY = const(4096 + 512)


class Transfer:
    def __init__(self, gatt):
        self.gatt = gatt
        self.envelope = None  # bytearray being received
        self.received = 0
        self.envelope_sha = None
        self.manifest = None
        self.manifest_sha256 = None
        self.sink = None
        self.frames = 0
        self.nacked = -1
        self.rx = bytearray(RX_CAPACITY)
        self.rx_len = 0

    def kind(self):
        return self.manifest and self.manifest.get("kind")

    def sha(self):
        return self.manifest_sha256 or self.envelope_sha

    def close(self):
        if self.sink is not None:
            self.sink.abort()
            self.sink = None

    def control(self, msg):
        op = msg[0]
        if op == OFFER:
            self._offer(msg)
        elif op == MANIFEST:
            if self.envelope is None:
                raise Refused("protocol", "MANIFEST without OFFER")
            if not self.take_part(msg):
                raise Refused("protocol", "MANIFEST offset")
        elif op == COMMIT:
            self._commit()
        elif op == ABORT:
            self.gatt.end_transfer()
            self.gatt.status.set_ota("idle")
            self.gatt.notify(bytes((ABORTED,)))
        else:
            raise Refused("protocol", "opcode %d" % op)

    def _offer(self, msg):
        # OFFER: u32 envelope length, 32-byte manifest SHA-256.
        if len(msg) != 1 + 4 + 32:
            raise Refused("protocol", "OFFER length")
        length = struct.unpack_from("<I", msg, 1)[0]
        sha = binascii.hexlify(msg[5:37]).decode()
        verified = self.gatt.verified
        if verified is not None and verified[1] == sha:
            self.manifest, self.manifest_sha256 = verified  # a reconnect: resume
            self._accept()
            return
        self.close()
        if length > ota.ENVELOPE_LIMIT:
            raise Refused("too_large", "envelope over %d bytes" % ota.ENVELOPE_LIMIT)
        gc.collect()
        self.envelope = bytearray(length)
        self.envelope_sha = sha
        self.received = 0
        self.gatt.notify(struct.pack("<BH", SEND_MANIFEST, max(20, self.gatt.mtu - 3 - 5)))

    def take_part(self, msg):
        # MANIFEST: u32 offset, bytes, in order. Called from the IRQ handler: a copy only.
        envelope = self.envelope
        if envelope is None or len(msg) < 5:
            return False
        offset = struct.unpack_from("<I", msg, 1)[0]
        n = len(msg) - 5
        if offset != self.received or offset + n > len(envelope):
            return False
        envelope[offset : offset + n] = memoryview(msg)[5:]
        self.received += n
        return True

    def poll(self):
        # The envelope is complete: verify it (in the main loop, not in the IRQ).
        if self.envelope is None or self.received < len(self.envelope):
            return
        envelope = self.envelope
        self.envelope = None
        self.gatt.status.set_ota("verifying")
        manifest, sha = ota.open_release(envelope, self.gatt.cfg)
        envelope = None
        if sha != self.envelope_sha:
            raise Refused("manifest_mismatch", "the OFFER named another manifest")
        self.manifest, self.manifest_sha256 = manifest, sha
        self.gatt.verified = (manifest, sha)
        self._accept()

    def _accept(self):
        if self.sink is None:
            self.sink = ota.sink_for(self.manifest, self.manifest_sha256, self.gatt.cfg)
        self.rx_len = 0
        self.frames = 0
        self.nacked = -1
        self.gatt.status.set_ota("receiving")
        chunk = max(16, self.gatt.mtu - 3 - FRAME_HEAD - FRAME_TAIL)
        self.gatt.notify(
            struct.pack("<BIIHB", ACCEPT, self.sink.resume_offset(), self.sink.total, chunk, WINDOW)
        )

    def data(self, data):
        rx = self.rx
        n = len(data)
        if self.rx_len + n > RX_CAPACITY:
            # More than a frame's remainder and a full characteristic buffer: not our gateway.
            self.rx_len = 0
            raise Refused("protocol", "DATA overflow")
        rx[self.rx_len : self.rx_len + n] = data
        filled = self.rx_len + n
        pos = 0
        while filled - pos >= FRAME_HEAD:
            _seq, offset, length = struct.unpack_from("<HIH", rx, pos)
            end = pos + FRAME_HEAD + length + FRAME_TAIL
            if length > RX_CAPACITY - FRAME_HEAD - FRAME_TAIL:
                self.rx_len = 0
                raise Refused("protocol", "DATA frame too long")
            if filled < end:
                break
            payload = memoryview(rx)[pos + FRAME_HEAD : end - FRAME_TAIL]
            crc = struct.unpack_from("<I", rx, end - FRAME_TAIL)[0]
            pos = end
            if self.sink is None:
                continue
            expected = self.sink.resume_offset()
            if offset != expected or binascii.crc32(payload) != crc:
                # A gap or a damaged frame: one NACK says where to restart; the frames still in
                # flight behind it, and old repeated ones, are dropped silently.
                if offset >= expected and self.nacked != expected:
                    self.gatt.notify(struct.pack("<BI", NACK, expected))
                    self.nacked = expected
                    self.frames = 0
                continue
            self.sink.write(payload)
            self.nacked = -1
            self.frames += 1
            if self.frames % WINDOW == 0 or self.sink.resume_offset() >= self.sink.total:
                self.gatt.notify(struct.pack("<BI", ACK, self.sink.resume_offset()))
        # Keep the unfinished frame at the front (an in-place move: no allocation).
        left = filled - pos
        if left and pos:
            rx[0:left] = memoryview(rx)[pos:filled]
        self.rx_len = left

    def _commit(self):
        if self.sink is None or self.sink.resume_offset() < self.sink.total:
            raise Refused("protocol", "COMMIT before every byte arrived")
        self.gatt.status.set_ota("installing")
        ota.finish(self.sink)
        self.sink = None
        self.gatt.notify(bytes((DONE, 0)))
        self.gatt.reset_due = True  # the main loop resets once the notification is out

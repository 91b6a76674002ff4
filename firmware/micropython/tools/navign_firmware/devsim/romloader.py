"""The ESP32 ROM serial loader, and the flasher stub esptool uploads into it, as esptool 5.x speaks
to them, writing a flash image file. Independent of the transport: bytes from the host go into
:meth:`RomLoader.feed`, answers come out through the ``write`` callable.

What is modelled (the wire format is :mod:`.loaderwire`, the chips :mod:`.esp32chips`, the flash
:mod:`.norflash`, the faults :mod:`.loaderfaults`):

* SLIP frames; SYNC is answered 8 times (``val`` ≠ 0 from the ROM, 0 from the stub); data
  commands (FLASH_DATA, FLASH_DEFL_DATA, MEM_DATA) have their XOR checksum checked; unknown
  commands get the ROM's "invalid message" status (``01 05``; the stub's ``C3 00``).
* FLASH_BEGIN / FLASH_DEFL_BEGIN erase the region rounded out to 4 KiB sectors. A FLASH_DATA
  block lands at ``offset + seq * block size``; a repeated FLASH_DEFL_DATA ``seq`` is
  acknowledged again without being decompressed twice.
* A fake stub: MEM_BEGIN/MEM_DATA are acknowledged and discarded; MEM_END with an entry point
  answers, then sends ``OHAI``; from then on stub semantics (ERASE_FLASH, ERASE_REGION,
  READ_FLASH streaming with host acks and a closing MD5, raw 16-byte SPI_FLASH_MD5).
  FLASH_END / FLASH_DEFL_END asking for a reboot (``--after no-reset``) returns to the ROM.
* Resets: a pty or socket carries no DTR/RTS, so esptool's reset into the loader is invisible.
  A SYNC that arrives while the stub runs after more than :data:`QUIET_RESET` seconds of silence
  is taken as the first packet after such a reset: the loader is back in the ROM first. esptool
  never syncs with a running stub within one run, and a new run's first SYNC comes at least
  ~0.2 s after the previous run's last packet (measured: 0.21-0.32 s back to back, more under
  load), so 0.1 s tells runs apart; with 0.5 s a run that follows at once would find the stub
  still running, and ``--chip esp32 --no-stub`` then fails on the stub's 16-byte MD5.
  :meth:`RomLoader.reset` is the explicit hard reset for a harness that knows better.

The standalone runner on a pty is :mod:`.romloader_main`.

Public: :class:`RomLoader`, and the timing constants :data:`QUIET_RESET` and
:data:`SYNC_REPLIES`.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from navign_firmware.devsim.esp32chips import CHIPS, DEFAULT_MAC, SPI_CMD_USR
from navign_firmware.devsim.loaderfaults import Fault, FaultBook
from navign_firmware.devsim.loaderwire import NAMES, ROM_SYNC_VAL, Err, Op, checksum, response, slip
from navign_firmware.devsim.norflash import SECTOR, NorFlash

log = logging.getLogger(__name__)

#: Silence (s) before a SYNC after which a running stub is taken to have been reset to the ROM.
QUIET_RESET: Final = 0.1
#: How many answers the ROM sends to one SYNC (esptool reads the 7 extra ones).
SYNC_REPLIES: Final = 8
#: Blocks of a READ_FLASH sent ahead of the host's acks (esptool asks for up to 64).
READ_WINDOW: Final = 4


class _RefusedError(Exception):
    def __init__(self, err: Err) -> None:
        super().__init__(err.name)
        self.err = err


@dataclass(slots=True)
class _Session:
    """A FLASH_BEGIN or FLASH_DEFL_BEGIN in progress."""

    offset: int
    block: int
    inflate: zlib._Decompress | None = None
    pos: int = 0
    last_seq: int = -1


@dataclass(slots=True)
class _ReadStream:
    """A stub READ_FLASH: blocks go out ahead of the host's acks, then the MD5."""

    offset: int
    length: int
    block: int
    sent: int = 0
    md5: hashlib._Hash = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))


class RomLoader:
    """One chip's loader over ``flash_path`` (created all 0xFF when missing, padded with 0xFF up
    to ``flash_size``). ``on_run`` is called when the ROM is told to leave for the app."""

    def __init__(
        self,
        chip: str,
        flash_path: Path,
        *,
        write: Callable[[bytes], None],
        mac: bytes = DEFAULT_MAC,
        flash_size: int = 4 * 1024 * 1024,
        faults: Sequence[Fault] = (),
        on_run: Callable[[], None] | None = None,
        quiet_reset: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if chip not in CHIPS:
            raise ValueError(f"unknown chip {chip!r} (known: {', '.join(CHIPS)})")
        if len(mac) != 6:
            raise ValueError("a MAC is 6 bytes")
        self._flash = NorFlash(flash_path, flash_size)
        self.chip = CHIPS[chip]
        self.flash_path = flash_path
        self.flash_size = flash_size
        self.mac = mac
        #: Seconds of silence before a SYNC that mean a reset (``None``: :data:`QUIET_RESET`).
        self.quiet_reset = quiet_reset
        self.stub_running = False
        self._book = FaultBook(faults)
        self._write = write
        self._on_run = on_run
        self._clock = clock
        self._dead = False
        self._in_frame = False
        self._partial = bytearray()
        self._last_rx = clock()
        self._gap = 0.0
        self._regs: dict[int, int] = {}
        self._session: _Session | None = None
        self._reading: _ReadStream | None = None
        self._out: list[bytes] = []
        self._after: list[bytes] = []

    # -- the wire ---------------------------------------------------------------------------

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._book.faults

    @property
    def commands(self) -> Counter[str]:
        """How many of each command (by name, or ``0xNN``) arrived."""
        return self._book.commands

    @property
    def busy(self) -> bool:
        """A SLIP frame is partly received."""
        return self._in_frame

    def reset(self) -> None:
        """A hard reset: back in the ROM, the partial frame and any flash session dropped (a
        ``die`` or ``silent`` fault stays)."""
        self.stub_running = False
        self._in_frame = False
        self._partial.clear()
        self._regs.clear()
        self._session = None
        self._reading = None

    def feed(self, data: bytes) -> None:
        """Bytes from the host: complete SLIP frames are answered through ``write``; bytes
        outside frames are ignored."""
        now = self._clock()
        gap, self._last_rx = now - self._last_rx, now
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = data.find(0xC0, pos)
                if start < 0:
                    return
                pos, self._in_frame, self._gap = start + 1, True, gap
                continue
            end = data.find(0xC0, pos)
            if end < 0:
                self._partial += data[pos:]
                return
            self._partial += data[pos:end]
            pos = end + 1
            if not self._partial:
                continue  # C0 C0: the second one opens the frame
            raw = bytes(self._partial)
            self._partial.clear()
            self._in_frame = False
            self._dispatch(raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))

    def _dispatch(self, frame: bytes) -> None:
        if self._dead:
            return
        if self._reading is not None:
            if len(frame) == 4:
                self._read_ack(struct.unpack("<I", frame)[0])
                return
            self._reading = None  # the host gave up reading
        if len(frame) < 8 or frame[0] != 0:
            return
        op, _size, chk = struct.unpack_from("<xBHI", frame)
        name = NAMES.get(op) or f"0x{op:02X}"
        kind = self._book.count(name)
        if kind == "die":
            log.info("fault: %s #%d: the device dies", name, self.commands[name])
            self._dead = True
            return
        if kind == "silent":
            return
        if op == Op.SYNC:
            log.debug("SYNC after %.3f s of silence", self._gap)
            quiet = QUIET_RESET if self.quiet_reset is None else self.quiet_reset
            if self.stub_running and self._gap > quiet:
                log.info("the stub was reset to the ROM (a SYNC after %.2f s)", self._gap)
                self.reset()
        self._out.clear()
        self._after.clear()
        try:
            if kind == "bad_checksum":
                log.info(
                    "fault: %s #%d is answered with a checksum error", name, self.commands[name]
                )
                raise _RefusedError(Err.CHECKSUM)
            handler = self._handlers.get(op)
            if handler is None:
                raise _RefusedError(Err.INVALID)
            handler(self, op, frame[8:], chk)
        except _RefusedError as refused:
            log.debug("%s refused: %s", name, refused.err.name)
            self._out = [self._response(op, 0, b"", refused.err)]
            self._after.clear()
        if kind == "drop":
            log.info("fault: the answer to %s #%d is dropped", name, self.commands[name])
            self._out.clear()
        for reply in (*self._out, *self._after):
            self._write(slip(reply))

    def _response(self, op: int, val: int, payload: bytes, err: Err | None = None) -> bytes:
        return response(op, val, payload, err, stub=self.stub_running)

    def _ok(self, op: int, val: int = 0, payload: bytes = b"") -> None:
        self._out.append(self._response(op, val, payload))

    # -- the flash --------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int, err: Err) -> None:
        if not self._flash.fits(offset, length):
            raise _RefusedError(err)

    def _program(self, offset: int, data: bytes) -> None:
        try:
            self._flash.program(offset, data)
        except ValueError as exc:
            raise _RefusedError(Err.WRITE) from exc

    # -- commands ---------------------------------------------------------------------------

    def _sync(self, op: int, data: bytes, chk: int) -> None:
        val = 0 if self.stub_running else ROM_SYNC_VAL
        self._out.extend(self._response(op, val, b"") for _ in range(SYNC_REPLIES))

    def _read_reg(self, op: int, data: bytes, chk: int) -> None:
        if len(data) < 4:
            raise _RefusedError(Err.LENGTH)
        self._ok(op, self._register(struct.unpack_from("<I", data)[0]))

    def _register(self, addr: int) -> int:
        return self.chip.read_register(addr, self.mac, self._regs)

    def _write_reg(self, op: int, data: bytes, chk: int) -> None:
        if not data or len(data) % 16:
            raise _RefusedError(Err.LENGTH)
        for addr, value, mask, _delay in struct.iter_unpack("<IIII", data):
            new = (self._register(addr) & ~mask) | (value & mask)
            self._regs[addr] = new & 0xFFFFFFFF
            if addr == self.chip.spi_base and new & SPI_CMD_USR:
                self._spi_command()
                self._regs[addr] = new & ~SPI_CMD_USR
        self._ok(op)

    def _spi_command(self) -> None:
        """Run the user command the SPI registers describe; its answer goes to W0."""
        answer = self.chip.spi_user_command(self._regs, self.flash_size)
        if answer is not None:
            w0, value = answer
            self._regs[w0] = value

    def _security_info(self, op: int, data: bytes, chk: int) -> None:
        info = self.chip.security_info_reply()
        if info is None:
            raise _RefusedError(Err.INVALID)
        self._ok(op, 0, info)

    def _ack(self, op: int, data: bytes, chk: int) -> None:
        self._ok(op)  # SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE, MEM_BEGIN

    def _mem_data(self, op: int, data: bytes, chk: int) -> None:
        self._block(data, chk)
        self._ok(op)

    def _mem_end(self, op: int, data: bytes, chk: int) -> None:
        self._ok(op)
        if len(data) >= 8 and struct.unpack_from("<I", data)[0] == 0:  # run the entry point
            self.stub_running = True
            self._after.append(b"OHAI")

    def _block(self, data: bytes, chk: int) -> tuple[int, bytes]:
        """A data command's ``(seq, payload)``, length and checksum checked."""
        if len(data) < 16:
            raise _RefusedError(Err.LENGTH)
        size, seq = struct.unpack_from("<II", data)
        payload = data[16:]
        if size != len(payload):
            raise _RefusedError(Err.LENGTH)
        if checksum(payload) != chk & 0xFF:
            raise _RefusedError(Err.CHECKSUM)
        return seq, payload

    def _flash_begin(self, op: int, data: bytes, chk: int) -> None:
        if len(data) < 16:
            raise _RefusedError(Err.LENGTH)
        size, _blocks, block, offset = struct.unpack_from("<IIII", data)
        self._check_range(offset, size, Err.WRITE)
        if size:
            self._flash.erase(offset, size)
        inflate = zlib.decompressobj() if op == Op.FLASH_DEFL_BEGIN else None
        self._session = _Session(offset, block, inflate, offset)
        self._ok(op)

    def _flash_data(self, op: int, data: bytes, chk: int) -> None:
        session = self._session
        if session is None or session.inflate is not None:
            raise _RefusedError(Err.NOT_IN_FLASH)
        seq, payload = self._block(data, chk)
        self._program(session.offset + seq * session.block, payload)
        self._ok(op)

    def _flash_defl_data(self, op: int, data: bytes, chk: int) -> None:
        session = self._session
        if session is None or session.inflate is None:
            raise _RefusedError(Err.NOT_IN_FLASH)
        seq, payload = self._block(data, chk)
        if seq != session.last_seq:  # a repeat of the last block (its answer was lost): ack
            try:
                plain = session.inflate.decompress(payload)
            except zlib.error as exc:
                raise _RefusedError(Err.DEFLATE) from exc
            self._program(session.pos, plain)
            session.pos += len(plain)
            session.last_seq = seq
        self._ok(op)

    def _flash_end(self, op: int, data: bytes, chk: int) -> None:
        stay = len(data) >= 4 and struct.unpack_from("<I", data)[0] != 0
        self._session = None
        self._ok(op)
        if self.stub_running:
            if not stay:  # the stub reboots into the ROM loader (esptool --after no-reset)
                self.stub_running = False
        elif self._on_run is not None:
            self._on_run()

    def _md5(self, op: int, data: bytes, chk: int) -> None:
        if len(data) < 8:
            raise _RefusedError(Err.LENGTH)
        offset, length = struct.unpack_from("<II", data)
        self._check_range(offset, length, Err.READ_LEN)
        digest = hashlib.md5(self._flash.read(offset, length), usedforsecurity=False)
        self._ok(op, 0, digest.digest() if self.stub_running else digest.hexdigest().encode())

    def _read_slow(self, op: int, data: bytes, chk: int) -> None:
        if self.stub_running:
            raise _RefusedError(Err.INVALID)
        offset, length = struct.unpack_from("<II", data.ljust(8, b"\0"))
        self._check_range(offset, min(length, 64), Err.READ_LEN)
        self._ok(op, 0, self._flash.read(offset, min(length, 64)).ljust(64, b"\0"))

    def _erase_flash(self, op: int, data: bytes, chk: int) -> None:
        if not self.stub_running:
            raise _RefusedError(Err.INVALID)
        self._flash.erase(0, self.flash_size)
        self._ok(op)

    def _erase_region(self, op: int, data: bytes, chk: int) -> None:
        if not self.stub_running:
            raise _RefusedError(Err.INVALID)
        offset, length = struct.unpack_from("<II", data.ljust(8, b"\0"))
        if offset % SECTOR or length % SECTOR:
            raise _RefusedError(Err.FAILED)
        self._check_range(offset, length, Err.FAILED)
        self._flash.erase(offset, length)
        self._ok(op)

    def _read_flash(self, op: int, data: bytes, chk: int) -> None:
        if not self.stub_running:
            raise _RefusedError(Err.INVALID)
        if len(data) < 16:
            raise _RefusedError(Err.LENGTH)
        offset, length, block, _inflight = struct.unpack_from("<IIII", data)
        self._check_range(offset, length, Err.READ_LEN)
        if not block:
            raise _RefusedError(Err.FAILED)
        self._ok(op)
        self._reading = _ReadStream(offset, length, block)
        self._read_more(acked=0, into=self._after)

    def _read_ack(self, acked: int) -> None:
        out: list[bytes] = []
        self._read_more(acked, out)
        for frame in out:
            self._write(slip(frame))

    def _read_more(self, acked: int, into: list[bytes]) -> None:
        stream = self._reading
        assert stream is not None
        while stream.sent < stream.length and stream.sent - acked < READ_WINDOW * stream.block:
            chunk = self._flash.read(
                stream.offset + stream.sent, min(stream.block, stream.length - stream.sent)
            )
            stream.md5.update(chunk)
            stream.sent += len(chunk)
            into.append(chunk)
        if acked >= stream.length:
            into.append(stream.md5.digest())
            self._reading = None

    def _run_user_code(self, op: int, data: bytes, chk: int) -> None:
        if self._on_run is not None:
            self._on_run()

    _handlers: Final[Mapping[int, Callable[[RomLoader, int, bytes, int], None]]] = {
        Op.SYNC: _sync,
        Op.READ_REG: _read_reg,
        Op.WRITE_REG: _write_reg,
        Op.GET_SECURITY_INFO: _security_info,
        Op.SPI_ATTACH: _ack,
        Op.SPI_SET_PARAMS: _ack,
        Op.CHANGE_BAUDRATE: _ack,
        Op.MEM_BEGIN: _ack,
        Op.MEM_DATA: _mem_data,
        Op.MEM_END: _mem_end,
        Op.FLASH_BEGIN: _flash_begin,
        Op.FLASH_DEFL_BEGIN: _flash_begin,
        Op.FLASH_DATA: _flash_data,
        Op.FLASH_DEFL_DATA: _flash_defl_data,
        Op.FLASH_END: _flash_end,
        Op.FLASH_DEFL_END: _flash_end,
        Op.SPI_FLASH_MD5: _md5,
        Op.READ_FLASH_SLOW: _read_slow,
        Op.ERASE_FLASH: _erase_flash,
        Op.ERASE_REGION: _erase_region,
        Op.READ_FLASH: _read_flash,
        Op.RUN_USER_CODE: _run_user_code,
    }

"""One simulated ESP32 board on one pty: the ROM serial loader and MicroPython share the port,
as they share a real board's USB-UART.

A pty carries no DTR/RTS, so the resets esptool makes with them are read from the traffic:

* a SYNC frame (esptool's first packet) while MicroPython runs means esptool reset the board into
  its download mode: MicroPython stops and the ROM loader answers (:mod:`.romloader`);
* the first byte that is not SLIP while the loader is idle means the board was reset into its
  app (esptool's ``--after hard-reset``, then mpremote's ``\\r\\x03``): the board boots what the
  flash holds. When the flash holds a bootloader, partition table and MicroPython app for this
  chip (:func:`navign_firmware.flashing.fwimage.inspect_bytes`), MicroPython boots
  (:mod:`.repl`, the real unix port, littlefs in the flash's ``vfs`` partition); otherwise the
  ROM prints ``invalid header`` as a real chip does, and nothing answers a REPL.

A new board's flash is erased (all 0xFF): it boots nothing until it is flashed.

Run one per process (esptool's 0.1 s SYNC timeout wants a process of its own):
``python -m navign_firmware.devsim.board --chip esp32 --workdir DIR [--mac MAC]
[--fault SPEC ...] [--stats FILE]`` prints ``PORT /dev/pts/N`` when it is ready.
:class:`BoardProcess` does that for tests and benchmarks.

Public: :class:`Board`, :class:`BoardProcess`, :data:`FLASH_SIZE`, :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from navign_firmware.devsim.loaderfaults import parse_fault
from navign_firmware.devsim.repl import MicroPythonRepl
from navign_firmware.devsim.romloader import RomLoader
from navign_firmware.devsim.serialpty import PtyPort
from navign_firmware.flashing import fwimage

FLASH_SIZE: Final = 4 * 1024 * 1024
#: esptool's SYNC packet (command 0x08, 36 bytes of 07 07 12 20 55...).
SYNC_PREFIX: Final = b"\xc0\x00\x08\x24\x00"
#: How long the loader must have been idle before a non-SLIP byte counts as a reset into the app.
LOADER_QUIET: Final = 0.05
ROM_BANNER: Final = (
    b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
)
READY_TIMEOUT: Final = 30.0


class Board:
    """The board: its flash file in ``workdir``, its port, and which side has the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        chip: str,
        mac: bytes,
        faults: Sequence[str] = (),
        env: dict[str, str] | None = None,
        paced: bool = False,
    ) -> None:
        self.workdir = workdir
        self.chip = chip
        self.flash_path = workdir / "flash.bin"
        if not self.flash_path.exists():
            with self.flash_path.open("wb") as f:
                f.write(b"\xff" * FLASH_SIZE)
        self.port = PtyPort(paced=paced)
        self.rom = RomLoader(
            chip,
            self.flash_path,
            write=self.port.write,
            mac=mac,
            flash_size=FLASH_SIZE,
            faults=[parse_fault(f) for f in faults],
        )
        self.repl = MicroPythonRepl(
            flash_path=self.flash_path, chip=chip, uid=mac.hex(), write=self.port.write, env=env
        )
        #: "app" (MicroPython or a failed boot) or "loader" (the ROM's download mode).
        self.mode = "app"
        self.boots = 0
        self._loader_active = 0.0

    def app_is_valid(self) -> bool:
        offset = fwimage.BOOTLOADER_OFFSET[self.chip]
        with self.flash_path.open("rb") as f:
            f.seek(offset)
            data = f.read(FLASH_SIZE - offset)
        try:
            fwimage.inspect_bytes(data, self.chip)
        except fwimage.NotMicroPythonImageError:
            return False
        return True

    def boot(self, cause: str) -> None:
        """Reset into the app: MicroPython when the flash holds it."""
        self.mode = "app"
        self.boots += 1
        if self.app_is_valid():
            self.repl.boot(cause)  # which prints the ROM's boot lines itself
        else:
            self.repl.stop()
            self.port.write(ROM_BANNER + b"invalid header: 0xffffffff\r\n")

    def _enter_loader(self) -> None:
        self.repl.stop()
        self.rom.reset()
        self.mode = "loader"
        self.port.write(ROM_BANNER + b"waiting for download\r\n")

    def handle(self, data: bytes) -> None:
        """Bytes from the host."""
        if self.mode == "app":
            sync = data.find(SYNC_PREFIX)
            if sync < 0:
                if self.repl.running:
                    self.repl.feed(data)
                elif self.app_is_valid():  # a board whose last boot failed, flashed since
                    self.boot("hard")
                    self.repl.feed(data)
                return
            self._enter_loader()
            data = data[sync:]
        now = time.monotonic()
        if (
            data
            and data[0] != 0xC0
            and not self.rom.busy
            and now - self._loader_active >= LOADER_QUIET
        ):
            self.boot("hard")
            if self.repl.running:
                self.repl.feed(data)
            return
        self._loader_active = now
        self.rom.feed(data)

    def serve(self, stop: list[bool], watch: int | None = None) -> None:
        """Relay until ``stop[0]`` is set, or ``watch`` (a file descriptor: the runner's stdin)
        reaches its end."""
        while not stop[0]:
            fds: list[int] = [self.port.master]
            out = self.repl.fileno()
            if out is not None:
                fds.append(out)
            if watch is not None:
                fds.append(watch)
            try:
                ready, _, _ = select.select(fds, [], [], 0.2)
            except InterruptedError:
                continue
            if watch is not None and watch in ready:
                try:
                    if not os.read(watch, 4096):
                        return
                except BlockingIOError:
                    pass
            if out is not None and out in ready:
                self.repl.pump()
            if self.port.master in ready:
                data = self.port.read(0)
                if data:
                    self.handle(data)

    def stats(self) -> dict[str, object]:
        return {
            "rx_bytes": self.port.rx_bytes,
            "tx_bytes": self.port.tx_bytes,
            "dropped": self.port.dropped,
            "boots": self.boots,
            "commands": dict(self.rom.commands),
        }

    def close(self) -> None:
        self.repl.stop()
        self.port.close()


class BoardProcess:
    """A :class:`Board` in a child process; :attr:`port` is its serial port."""

    def __init__(
        self,
        workdir: Path,
        *,
        chip: str = "esp32",
        mac: str = "a4:cf:12:00:00:01",
        faults: Sequence[str] = (),
        paced: bool = False,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.chip = chip
        self.mac = mac
        self.flash_path = workdir / "flash.bin"
        self.stats_path = workdir / "stats.json"
        argv = [
            sys.executable,
            "-m",
            "navign_firmware.devsim.board",
            "--chip",
            chip,
            "--workdir",
            str(workdir),
            "--mac",
            mac,
            "--stats",
            str(self.stats_path),
        ]
        for fault in faults:
            argv += ["--fault", fault]
        if paced:
            argv.append("--paced")
        self._log = (workdir / "board.log").open("ab")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith(b"PORT "):
            self.stop()
            raise RuntimeError(f"the board simulator did not start (see {workdir}/board.log)")
        self.port = line.decode().split(" ", 1)[1].strip()

    def stop(self) -> dict[str, object]:
        """Stop the board; its counters (bytes on the wire, boots, loader commands)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()
        try:
            return dict(json.loads(self.stats_path.read_text()))
        except (OSError, ValueError):
            return {}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m navign_firmware.devsim.board")
    p.add_argument("--chip", default="esp32", choices=tuple(fwimage.BOOTLOADER_OFFSET))
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--mac", default="a4:cf:12:00:00:01")
    p.add_argument("--fault", action="append", default=[])
    p.add_argument("--stats", type=Path)
    p.add_argument("--paced", action="store_true", help="move bytes at the host's baud rate")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    board = Board(
        args.workdir,
        chip=args.chip,
        mac=bytes.fromhex(args.mac.replace(":", "")),
        faults=args.fault,
        paced=args.paced,
    )
    stop = [False]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    os.set_blocking(sys.stdin.fileno(), False)
    board.boot("pwron")
    sys.stdout.write(f"PORT {board.port.path}\n")
    sys.stdout.flush()
    try:
        board.serve(stop, sys.stdin.fileno())
    finally:
        board.close()
        if args.stats is not None:
            args.stats.write_text(json.dumps(board.stats()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

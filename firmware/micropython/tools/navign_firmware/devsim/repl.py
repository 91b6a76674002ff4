"""A MicroPython board's REPL on a serial line, as mpremote speaks it: the real unix port running
``host/replboard.py`` on the board's flash file (littlefs at ``/``), one process per boot.

The host side relays bytes between a serial line (``write`` and :meth:`MicroPythonRepl.feed`)
and the board process (its stdin, non-blocking, and stdout). The board reports its state on a
side channel (a pipe, one short line per change, see ``host/replboard.py``), so that a Ctrl-C
(``\\x03``) from the host becomes SIGINT (KeyboardInterrupt) while code runs, as a board's UART
interrupt does, and stays a byte for the REPL otherwise. Input that arrives before main.py (or
the REPL) runs is held, so a Ctrl-C during the boot interrupts main.py rather than boot.py.

Resets: ``machine.reset()`` ends the process with :data:`RESET_EXIT` and the board is powered
on again (reset cause ``soft``, as ESP-IDF's software reset reads on an ESP32); a soft reset
(Ctrl-D at an empty prompt, ``sys.exit()``) ends it with :data:`SOFT_FRIENDLY` or
:data:`SOFT_RAW` and a fresh process (a fresh heap) starts in that REPL without the bootloader,
running boot.py and, in the friendly REPL only, main.py, as MicroPython does.

Public: :class:`MicroPythonRepl`, :func:`main` (``python -m navign_firmware.devsim.repl --flash
FILE [--chip esp32] [--uid HEX] [--stats FILE]``: prints ``PORT /dev/pts/N`` and relays that pty
until SIGTERM, SIGINT or EOF on stdin), :data:`REPLBOARD`, :data:`SOFT_FRIENDLY`,
:data:`SOFT_RAW`, :data:`RESET_EXIT`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from navign_firmware import unix
from navign_firmware.devsim.serialpty import PtyPort
from navign_firmware.sim import BRICK_EXIT, RESET_EXIT, SHIM_HEAP

__all__ = ["REPLBOARD", "RESET_EXIT", "SOFT_FRIENDLY", "SOFT_RAW", "MicroPythonRepl", "main"]

REPLBOARD: Final = unix.HOST / "replboard.py"
SOFT_FRIENDLY: Final = 80
SOFT_RAW: Final = 81
#: Heap for the REPL's own code (compiled from source on the board's heap), on top of the shims';
#: the board's ballast takes back what is left over, so the app still gets ``app_heap``.
REPL_HEAP: Final = 32 * 1024
#: Bytes read from the board per :meth:`MicroPythonRepl.pump` (at most a few reads).
READ_CHUNK: Final = 65536
READS_PER_PUMP: Final = 4
#: Input kept for the board when its stdin pipe is full, or held during the boot; beyond that
#: it is dropped, as a UART's FIFO overflows.
INPUT_MAX: Final = 256 * 1024
#: How long a board process that closed its output gets to exit before it is killed.
EXIT_WAIT: Final = 5.0
#: The runner's select() tick (it also checks for SIGTERM and SIGINT this often).
TICK: Final = 0.1

_STATES: Final = {b"b": "boot", b"m": "main", b"x": "run", b"i": "idle"}
_HOLDING: Final = ("start", "boot")
_BUSY: Final = ("main", "run")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Process:
    """One boot: the board process, its pipes and an epoll set over its output and side
    channel."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        stdin_r, self.stdin = os.pipe()
        out_r, out_w = os.pipe()
        side_r, side_w = os.pipe()
        env["NAVIGN_SIM_REPL_FD"] = str(side_w)
        os.set_blocking(stdin_r, False)  # the board reads what is there, never waits in read()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=stdin_r,
                stdout=out_w,
                stderr=out_w,
                env=env,
                pass_fds=(side_w,),
                start_new_session=True,  # a Ctrl-C at the host's terminal is not the board's
            )
        except OSError:
            for fd in (self.stdin, out_r, side_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, out_w, side_w):
                os.close(fd)
        self.out = out_r
        self.side = side_r
        for fd in (self.stdin, self.out, self.side):
            os.set_blocking(fd, False)
        self.poller = select.epoll()
        self.poller.register(self.out, select.EPOLLIN)
        self.poller.register(self.side, select.EPOLLIN)
        self.side_buffer = b""
        self.side_open = True

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            code = self.proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            code = -9
        self.close()
        return code

    def close(self) -> None:
        self.poller.close()
        for fd in (self.stdin, self.out, self.side):
            with contextlib.suppress(OSError):
                os.close(fd)


class MicroPythonRepl:
    """One simulated board's MicroPython, one process per boot, on the serial line given by
    ``write`` (bytes to the host) and :meth:`feed` (bytes from the host).

    Call :meth:`pump` when :meth:`fileno` is readable (select/poll), and now and then anyway;
    call everything from one thread.
    :attr:`state` is ``off``, ``start`` (the process is starting), ``boot`` (boot.py runs),
    ``main`` (main.py runs), ``run`` (code from the REPL runs) or ``idle`` (a prompt waits);
    :attr:`mode` is ``friendly`` or ``raw``.
    """

    def __init__(
        self,
        *,
        flash_path: Path,
        chip: str,
        uid: str,
        write: Callable[[bytes], None],
        env: Mapping[str, str] | None = None,
        app_heap: int = 96 * 1024,
        rom_log: bool = True,
    ) -> None:
        self.flash_path = flash_path
        #: Whether each power-on prints the ROM's reset lines (``ets ...``, ``rst:...``); an
        #: embedding simulator that prints its own passes False.
        self.rom_log = rom_log
        self.chip = chip
        self.uid = uid
        self.app_heap = app_heap
        self._write = write
        self.env = dict(env or {})
        #: The board's GATT port (host/bluetooth.py), kept across boots like the radio's address.
        self.env.setdefault("NAVIGN_SIM_BLE_PORT", str(_free_port()))
        self.state = "off"
        self.mode = "friendly"
        #: The app partition the last hard boot chose, and the heap left to the app.
        self.partition: str | None = None
        self.heap_free: int | None = None
        #: How the last process ended (its exit code), when the board stopped by itself.
        self.last_exit: int | None = None
        self.boots = 0
        self.soft_resets = 0
        self.interrupts = 0
        self.raw_pastes = 0
        self.dropped = 0
        self._proc: _Process | None = None
        self._held = bytearray()  # input during the boot, before main.py or the REPL
        self._pending = bytearray()  # input the stdin pipe did not take yet

    @property
    def running(self) -> bool:
        return self._proc is not None

    # --- power --------------------------------------------------------------------------------
    def boot(self, cause: str = "pwron") -> None:
        """Power on (stopping a running board first): bootloader, boot.py, main.py, the friendly
        REPL. ``cause`` is what ``machine.reset_cause()`` says (pwron, hard, soft, wdt)."""
        self.stop()
        self._spawn(hard=True, mode="friendly", cause=cause)

    def stop(self) -> None:
        """Cut the power (SIGKILL): every flash write that completed is in the flash file."""
        if self._proc is not None:
            self._proc.kill()
            self._proc = None
        self.state = "off"
        self._held.clear()
        self._pending.clear()

    def _spawn(self, *, hard: bool, mode: str, cause: str) -> None:
        env = unix.environment([unix.HOST], self.env)
        env.update(
            NAVIGN_SIM_FLASH=str(self.flash_path),
            NAVIGN_SIM_CHIP=self.chip,
            NAVIGN_SIM_UID=self.uid,
            NAVIGN_SIM_RESET_CAUSE=cause,
            NAVIGN_SIM_REPL_BOOT="hard" if hard else "soft",
            NAVIGN_SIM_REPL_MODE=mode,
            NAVIGN_SIM_REPL_ROMLOG="1" if self.rom_log else "0",
        )
        env.pop("NAVIGN_SIM_CTL_FD", None)
        if not hard and self.partition:
            env["NAVIGN_SIM_RUNNING"] = self.partition
        heap = self.app_heap + SHIM_HEAP + REPL_HEAP
        argv = unix.command([str(REPLBOARD), str(self.app_heap)], heapsize=str(heap))
        self._held.clear()
        self._pending.clear()
        self._proc = _Process(argv, env)
        self.state = "start"
        self.mode = mode
        self.last_exit = None
        if hard:
            self.boots += 1
        else:
            self.soft_resets += 1

    # --- the serial line ------------------------------------------------------------------------
    def fileno(self) -> int | None:
        """Readable when the board wrote something (or changed state, or ended); ``None`` when
        it is off. It changes at every boot: ask again each time."""
        return self._proc.poller.fileno() if self._proc is not None else None

    def feed(self, data: bytes) -> None:
        """Bytes from the host. A Ctrl-C while code runs is SIGINT, not a byte."""
        if self._proc is None or not data:
            return
        self._read_side()
        if self.state in _HOLDING:
            room = INPUT_MAX - len(self._held)
            self._held += data[:room]
            self.dropped += max(0, len(data) - room)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if self.state not in _BUSY:
            self._to_stdin(data)
            return
        pieces = data.split(b"\x03")
        for i, piece in enumerate(pieces):
            if i and self._proc is not None:
                self.interrupts += 1
                with contextlib.suppress(ProcessLookupError):
                    self._proc.proc.send_signal(signal.SIGINT)
            self._to_stdin(piece)

    def _to_stdin(self, data: bytes) -> None:
        room = INPUT_MAX - len(self._pending)
        self._pending += data[:room]
        self.dropped += max(0, len(data) - room)
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        if self._proc is None:
            return
        while self._pending:
            try:
                n = os.write(self._proc.stdin, self._pending)
            except (BlockingIOError, BrokenPipeError):
                return
            del self._pending[:n]

    def pump(self) -> None:
        """Pass on what the board wrote; notice state changes and the end of the process (then
        boot again after ``machine.reset()`` or a soft reset)."""
        proc = self._proc
        if proc is None:
            return
        self._read_side()
        self._flush_stdin()
        for _ in range(READS_PER_PUMP):
            try:
                data = os.read(proc.out, READ_CHUNK)
            except BlockingIOError:
                return
            if not data:
                self._ended()
                return
            self._write(data)

    def _read_side(self) -> None:
        proc = self._proc
        if proc is None or not proc.side_open:
            return
        while True:
            try:
                chunk = os.read(proc.side, 4096)
            except BlockingIOError:
                break
            if not chunk:
                proc.side_open = False
                proc.poller.unregister(proc.side)
                break
            proc.side_buffer += chunk
        *lines, proc.side_buffer = proc.side_buffer.split(b"\n")
        was = self.state
        for line in lines:
            self._side_message(line)
        if was in _HOLDING and self.state not in _HOLDING and self._held:
            held = bytes(self._held)
            self._held.clear()
            self._deliver(held)

    def _side_message(self, line: bytes) -> None:
        head, rest = line[:1], line[1:]
        if head in _STATES:
            self.state = _STATES[head]
        elif head == b"R":
            self.mode = "raw"
        elif head == b"F":
            self.mode = "friendly"
        elif head == b"P":
            self.partition = rest.decode()
        elif head == b"H":
            self.heap_free = int(rest)
        elif head == b"A":
            self.raw_pastes += 1

    def _ended(self) -> None:
        proc = self._proc
        assert proc is not None
        self._read_side()
        try:
            code = proc.proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            code = proc.kill()
        proc.close()
        self._proc = None
        self.state = "off"
        if code == RESET_EXIT:
            self._spawn(hard=True, mode="friendly", cause="soft")
        elif code in (SOFT_FRIENDLY, SOFT_RAW):
            self._spawn(hard=False, mode="raw" if code == SOFT_RAW else "friendly", cause="soft")
        else:  # switched off (stdin closed), no bootable app (BRICK_EXIT), or a crash
            self.last_exit = code

    @property
    def bricked(self) -> bool:
        """The last power-on found no bootable app."""
        return self.last_exit == BRICK_EXIT


def _stats(port: PtyPort, repl: MicroPythonRepl) -> dict[str, int]:
    return {
        "rx_bytes": port.rx_bytes,
        "tx_bytes": port.tx_bytes,
        "tx_dropped": port.dropped,
        "boots": repl.boots,
        "soft_resets": repl.soft_resets,
        "interrupts": repl.interrupts,
        "raw_pastes": repl.raw_pastes,
        "input_dropped": repl.dropped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m navign_firmware.devsim.repl",
        description="A simulated MicroPython board's REPL on a pty, for mpremote.",
    )
    parser.add_argument("--flash", type=Path, required=True, help="the board's flash file")
    parser.add_argument("--chip", default="esp32", choices=["esp32", "esp32c3", "esp32s3"])
    parser.add_argument("--uid", default="a4cf12000001", help="machine.unique_id() in hex")
    parser.add_argument("--stats", type=Path, help="write JSON byte counts here on exit")
    args = parser.parse_args(argv)
    if not args.flash.is_file():
        parser.error(f"no flash file {args.flash}")

    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = PtyPort()
    repl = MicroPythonRepl(flash_path=args.flash, chip=args.chip, uid=args.uid, write=port.write)
    stdin = sys.stdin.fileno()
    try:
        sys.stdout.write(f"PORT {port.path}\n")
        sys.stdout.flush()
        repl.boot()
        while not stop:
            fds = [port.master, stdin]
            board = repl.fileno()
            if board is not None:
                fds.append(board)
            ready, _, _ = select.select(fds, [], [], TICK)
            if port.master in ready:
                repl.feed(port.read(0))
            if stdin in ready and not os.read(stdin, 4096):
                break  # EOF: whoever started us is gone
            repl.pump()
    finally:
        repl.stop()
        if args.stats is not None:
            args.stats.write_text(json.dumps(_stats(port, repl)) + "\n")
        port.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
